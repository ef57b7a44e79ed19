// Matrix products, by the provider an op's `products` attribute names:
//   blas         float32 by the library loaded at start (`bert_gluon_load_blas`,
//                library.cc): Intel MKL (it dispatches on the CPU, AVX2 to
//                AMX), or else the OpenBLAS that MXNet ships
//   onednn       float32 by oneDNN (onednn.h)
//   mkl_bf16     bf16 x bf16 -> float32 by MKL
//   onednn_bf16  bf16 x bf16 -> float32 by oneDNN
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

enum class Products { blas, onednn, mkl_bf16, onednn_bf16 };
inline bool bf16_operands(Products by) {
  return by == Products::mkl_bf16 || by == Products::onednn_bf16;
}

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

}  // namespace blas
