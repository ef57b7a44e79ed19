// Matrix products from a library that dispatches on the CPU it runs on:
// Intel MKL (AVX2, AVX-512, AMX; float32 and bf16 x bf16 -> float32), found
// at run time by the Python side (`bert_gluon_load_blas`, library.cc), or
// else the OpenBLAS that MXNet ships (float32 only). bf16 products come from
// the provider an op's bf16 attribute names: MKL's or oneDNN's (onednn.h).
// Row-major throughout.
//
// Called from inside an OpenMP parallel region, MKL runs on the calling
// thread alone (its GNU threading layer, on MXNet's libgomp); from outside,
// on omp_get_max_threads() threads.
#pragma once
#include <cstddef>
#include <cstdint>

namespace blas {

typedef uint16_t bf16;  // the upper half of a float32

// Who multiplies bf16 operands (none: the products run in float32)
enum class Bf16 { none, mkl, onednn };

// C (M, N; ldc) = alpha * op(A) @ op(B) + beta * C; op(A) is (M, K), op(B) (K, N)
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc);

// The same with bf16 operands, accumulated and returned in float32, by `by`
void gemm_bf16(Bf16 by, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta, float* C,
               int64_t ldc);

// A weight W (N, K) packed once as the right operand of many products
// X (M, K) @ W^T: packed_weight_bytes of space, pack_weight, then gemm_packed
// (bf16: W and X in bf16, a packing of `by`'s). With no packing API
// (OpenBLAS), the "packed" form is W itself, copied.
size_t packed_weight_bytes(Bf16 by, int64_t M, int64_t N, int64_t K);
void pack_weight(const float* W, int64_t N, int64_t K, int64_t M, void* packed);
void pack_weight_bf16(Bf16 by, const bf16* W, int64_t N, int64_t K, int64_t M, void* packed);
// C (M, N; ldc) = X (M, K; ldx) @ W^T + beta * C
void gemm_packed(int64_t M, int64_t N, int64_t K, const float* X, int64_t ldx,
                 const void* packed, float beta, float* C, int64_t ldc);
void gemm_packed_bf16(Bf16 by, int64_t M, int64_t N, int64_t K, const bf16* X, int64_t ldx,
                      const void* packed, float beta, float* C, int64_t ldc);

// Which library runs: "mkl", "openblas" or "" (none loaded yet)
const char* provider();

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
