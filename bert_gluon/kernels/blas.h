// Matrix products, by the provider an op's `products` attribute names:
//   blas         float32 by the library loaded at start (`bert_gluon_load_blas`,
//                library.cc): Intel MKL (it dispatches on the CPU, AVX2 to
//                AMX), or else the OpenBLAS that MXNet ships
//   onednn       float32 by oneDNN (onednn.h)
//   mkl_bf16     bf16 x bf16 -> float32 by MKL
//   onednn_bf16  bf16 x bf16 -> float32 by oneDNN
//   onednn_int8  u8 x s8 -> exact integer sums -> float32 by oneDNN, for the
//                fused encoder ops (inference) only: see Operand, below
// Row-major throughout.
//
// Called from inside an OpenMP parallel region, MKL and oneDNN run on the
// calling thread alone (on MXNet's libgomp); from outside, on
// omp_get_max_threads() threads.
#pragma once
#include <omp.h>
#include <cstddef>
#include <cstdint>

namespace blas {

typedef uint16_t bf16;  // the upper half of a float32

enum class Products { blas, onednn, mkl_bf16, onednn_bf16, onednn_int8 };
inline bool bf16_operands(Products by) {
  return by == Products::mkl_bf16 || by == Products::onednn_bf16;
}
inline bool int8_operands(Products by) { return by == Products::onednn_int8; }

// C (M, N; ldc) = alpha * op(A) @ op(B) + beta * C; op(A) is (M, K), op(B)
// (K, N); by a float32 provider (blas or onednn)
void sgemm(Products by, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
           float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
           float* C, int64_t ldc);

// The same with bf16 operands, accumulated and returned in float32, by a
// bf16 provider (mkl_bf16 or onednn_bf16)
void gemm_bf16(Products by, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
               float alpha, const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta,
               float* C, int64_t ldc);

// A weight W (N, K) packed once by `by` as the right operand of many
// products X (M, K) @ W^T: packed_weight_bytes of space, pack_weight (W
// float32) or pack_weight_bf16 (W bf16), then gemm_packed (X of W's type).
// MKL's layout is for any M up to the M given; oneDNN's for any M. With no
// packing API (OpenBLAS), the "packed" form is W itself, copied.
size_t packed_weight_bytes(Products by, int64_t M, int64_t N, int64_t K);
void pack_weight(Products by, const float* W, int64_t N, int64_t K, int64_t M, void* packed);
void pack_weight_bf16(Products by, const bf16* W, int64_t N, int64_t K, int64_t M,
                      void* packed);
// C (M, N; ldc) = X (M, K; ldx) @ W^T (+ bias (N,) on every row) + beta * C;
// oneDNN adds the bias in the product, MKL to C before it
void gemm_packed(Products by, int64_t M, int64_t N, int64_t K, const float* X, int64_t ldx,
                 const void* packed, float beta, float* C, int64_t ldc,
                 const float* bias = nullptr);
void gemm_packed_bf16(Products by, int64_t M, int64_t N, int64_t K, const bf16* X,
                      int64_t ldx, const void* packed, float beta, float* C, int64_t ldc,
                      const float* bias = nullptr);

// int8 products: W (N, K) quantized row by row to s8 of 7 bits (|q| <= 63,
// kWeightLevels) with a scale per row, packed once (pack_weight_s8, in
// packed_weight_bytes of space); X (M, K) row by row to u8 with a scale and
// a zero point per row (Operand); C (M, N; ldc) = the integer sums
// X_u8 @ W_s8^T, exact in float32 (|sum| < 2^24 for K < 1040), dequantized
// by the caller. 7-bit weights keep a u8 x s8 pair's sum within 16 bits
// (2 * 255 * 63 < 2^15): AVX2's vpmaddubsw, which saturates there, computes
// the same sums as VNNI and AMX, so answers do not depend on the CPU.
constexpr int kWeightLevels = 63;
void pack_weight_s8(Products by, const int8_t* W, int64_t N, int64_t K, void* packed);
void gemm_packed_u8s8(Products by, int64_t M, int64_t N, int64_t K, const uint8_t* X,
                      int64_t ldx, const void* packed, float* C, int64_t ldc);

// C (M, N; ldc) = beta C + bias (N,) on every row, on every thread outside a
// parallel region: a product's starting value where the bias is not fused.
// Returns the beta that adds the product to it (1).
inline float start_with_bias(int64_t M, int64_t N, float beta, float* C, int64_t ldc,
                             const float* bias) {
#pragma omp parallel for if (!omp_in_parallel())
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      C[i * ldc + j] = (beta == 0.f ? 0.f : beta * C[i * ldc + j]) + bias[j];
  return 1.f;
}


// float32 -> bf16, rounded to nearest even (NaN stays NaN)
inline bf16 to_bf16(float x) {
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16>((u >> 16) | 0x40);
  return static_cast<bf16>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline void to_bf16(const float* x, int64_t n, bf16* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = to_bf16(x[i]);
}

// A product's left operand X (n, K) in its provider's type, converted row
// by row into `space` (bytes(): per row K bf16, or K u8 and the row's scale
// and zero point): what a bf16 or int8 product multiplies. Row r of an int8
// operand stands for scale[r] * (q[r, :] - zero[r]), its range [min(x, 0),
// max(x, 0)] in 255 steps: asymmetric, so a row of GELU outputs (nearly all
// >= 0) keeps its 8 bits.
class Operand {
 public:
  static size_t bytes(Products by, int64_t n, int64_t K) {
    if (int8_operands(by)) return n * K + 2 * n * sizeof(float);
    return bf16_operands(by) ? n * K * sizeof(bf16) : 0;
  }
  Operand() = default;
  Operand(Products by, int64_t n, void* space) : by_(by) {
    char* at = static_cast<char*>(space);
    if (int8_operands(by)) {
      scale_ = reinterpret_cast<float*>(at);
      zero_ = scale_ + n;
      at += 2 * n * sizeof(float);
    }
    data_ = at;
  }
  // Row r (of K floats, K no more than the space's) converted; rows of one
  // operand all have the same K
  void set_row(int64_t r, const float* x, int64_t K) {
    if (!int8_operands(by_)) return to_bf16(x, K, reinterpret_cast<bf16*>(data_) + r * K);
    float lo = 0.f, hi = 0.f;
#pragma omp simd reduction(min: lo) reduction(max: hi)
    for (int64_t k = 0; k < K; ++k) {
      lo = x[k] < lo ? x[k] : lo;
      hi = x[k] > hi ? x[k] : hi;
    }
    const float step = hi > lo ? (hi - lo) / 255.f : 1.f;
    const float zero = __builtin_nearbyintf(-lo / step), inverse = 1.f / step;
    uint8_t* q = reinterpret_cast<uint8_t*>(data_) + r * K;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
      const float v = x[k] * inverse + zero + 0.5f;  // >= 0.5: truncation rounds
      q[k] = static_cast<uint8_t>(v < 0.f ? 0.f : v > 255.f ? 255.f : v);
    }
    scale_[r] = step;
    zero_[r] = zero;
  }
  // Rows 0 .. n - 1 of X (n, K), on every thread outside a parallel region
  void set_rows(int64_t n, const float* X, int64_t K) {
#pragma omp parallel for if (!omp_in_parallel() && n * K > (1 << 16))
    for (int64_t r = 0; r < n; ++r) set_row(r, X + r * K, K);
  }
  const bf16* bf16_rows() const { return reinterpret_cast<const bf16*>(data_); }
  const uint8_t* u8_rows() const { return reinterpret_cast<const uint8_t*>(data_); }
  const float* scales() const { return scale_; }
  const float* zeros() const { return zero_; }

 private:
  Products by_ = Products::blas;
  char* data_ = nullptr;
  float* scale_ = nullptr;
  float* zero_ = nullptr;
};

}  // namespace blas
