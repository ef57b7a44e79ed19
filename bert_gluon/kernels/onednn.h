// oneDNN's products (onednn.cc), behind blas.h's Products::onednn and
// Products::onednn_bf16: float32 results of float32 or bf16 operands
#pragma once
#include <cstddef>
#include <cstdint>
#include "blas.h"

namespace onednn {

// oneDNN's matmul implementation for M x K x N here (bf16 or float32
// operands), "" where none
const char* implementation(bool bf16, int64_t M, int64_t N, int64_t K);
// Matmul primitives kept now (bounded: the least recently used are freed)
size_t cached_primitives();
// As blas::sgemm and blas::gemm_bf16
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc);
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const blas::bf16* A, int64_t lda, const blas::bf16* B, int64_t ldb, float beta,
               float* C, int64_t ldc);
// W (N, K; bf16 or float32) reordered once into the layout oneDNN's matmul
// picks (for any M)
size_t packed_weight_bytes(bool bf16, int64_t N, int64_t K);
void pack_weight(bool bf16, const void* W, int64_t N, int64_t K, void* packed);
// C (M, N; ldc) = X (M, K; ldx) @ W^T (+ bias (N,), per row) + beta * C, W
// packed, X of W's type
void gemm_packed(bool bf16, int64_t M, int64_t N, int64_t K, const void* X, int64_t ldx,
                 const void* packed, float beta, float* C, int64_t ldc, const float* bias);

}  // namespace onednn
