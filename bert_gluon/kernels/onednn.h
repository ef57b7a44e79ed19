// oneDNN's products (onednn.cc), behind blas.h's Products::onednn,
// ::onednn_bf16 and ::onednn_int8: float32 results of float32, bf16 or
// u8 x s8 operands
#pragma once
#include <cstddef>
#include <cstdint>
#include "blas.h"

namespace onednn {

// The operands' types: src and weights float32, both bf16, or u8 src with
// s8 weights (the result float32 always)
enum class Operands { f32 = 0, bf16 = 1, u8s8 = 2 };

// oneDNN's matmul implementation for M x K x N here, "" where none
const char* implementation(Operands types, int64_t M, int64_t N, int64_t K);
// Matmul primitives kept now (bounded: the least recently used are freed)
size_t cached_primitives();
// As blas::sgemm and blas::gemm_bf16
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc);
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const blas::bf16* A, int64_t lda, const blas::bf16* B, int64_t ldb, float beta,
               float* C, int64_t ldc);
// W (N, K; of the weights' type) reordered once into the layout oneDNN's
// matmul picks (for any M)
size_t packed_weight_bytes(Operands types, int64_t N, int64_t K);
void pack_weight(Operands types, const void* W, int64_t N, int64_t K, void* packed);
// C (M, N; ldc) = X (M, K; ldx) @ W^T (+ bias (N,), per row) + beta * C, W
// packed, X of the src type
void gemm_packed(Operands types, int64_t M, int64_t N, int64_t K, const void* X, int64_t ldx,
                 const void* packed, float beta, float* C, int64_t ldc, const float* bias);

}  // namespace onednn
