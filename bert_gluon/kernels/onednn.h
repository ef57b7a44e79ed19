// oneDNN's bf16 products (onednn.cc), behind blas.h's Bf16::onednn
#pragma once
#include <cstddef>
#include <cstdint>
#include "blas.h"

namespace onednn {

// True when built with oneDNN's headers (and linked to libdnnl)
bool built();
// oneDNN's matmul implementation for bf16 M x K x N here, "" where none
const char* bf16_implementation(int64_t M, int64_t N, int64_t K);
// As blas::gemm_bf16
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const blas::bf16* A, int64_t lda, const blas::bf16* B, int64_t ldb, float beta,
               float* C, int64_t ldc);
// W (N, K) reordered once into the layout oneDNN's matmul picks (any M)
size_t packed_weight_bytes(int64_t N, int64_t K);
void pack_weight_bf16(const blas::bf16* W, int64_t N, int64_t K, void* packed);
// C (M, N; ldc) = X (M, K; ldx) @ W^T + beta * C, W packed
void gemm_packed_bf16(int64_t M, int64_t N, int64_t K, const blas::bf16* X, int64_t ldx,
                      const void* packed, float beta, float* C, int64_t ldc);

}  // namespace onednn
