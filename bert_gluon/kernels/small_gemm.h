// Register-blocked matrix products, single-threaded (the ops parallelize
// over heads, sequences or blocks of columns). GCC vector extensions, so it
// builds for any target; with -march=native on an FMA machine each step is
// one fused multiply-add.
//
// gemm: the per-head products of attention (64 x 64 x 64 at BERT's head
// size), where a BLAS call's setup costs more than the arithmetic.
//   C (M x N, row stride ldc) = alpha * A (M x K) @ B (K x N, row stride ldb)
//   A[i][k] = a[i * a_row + k * a_col]: a_col = 1 reads A, a_row = 1 reads
//   a stored matrix's transpose.
// gemm_packed / gemm_prepacked: products with a Dense weight that many row
// blocks share (the encoder block, the MLM projection), both operands
// packed so that the inner loop reads them sequentially, bias added in
// registers.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__FMA__)
#include <immintrin.h>
#endif

namespace small_gemm {

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));  // unaligned

inline v8 fma8(float a, v8 b, v8 c) {
#if defined(__FMA__)
  return _mm256_fmadd_ps(_mm256_set1_ps(a), b, c);
#else
  return a * b + c;
#endif
}

// An MR x (8 * NV) block of C: all of it stays in registers over the K loop.
template <int MR, int NV>
inline void block(int64_t K, const float* a, int64_t a_row, int64_t a_col,
                  const float* b, int64_t ldb, float* c, int64_t ldc, float alpha) {
  v8 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = v8{};
  for (int64_t k = 0; k < K; ++k) {
    v8 bk[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bk[v] = *reinterpret_cast<const v8u*>(b + k * ldb + 8 * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float aik = a[i * a_row + k * a_col];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = fma8(aik, bk[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      *reinterpret_cast<v8u*>(c + i * ldc + 8 * v) = acc[i][v] * alpha;
}

// Rows [0, M) of one column panel of 8 * NV columns
template <int NV>
inline void panel(int64_t M, int64_t K, const float* a, int64_t a_row, int64_t a_col,
                  const float* b, int64_t ldb, float* c, int64_t ldc, float alpha) {
  constexpr int MR = NV == 2 ? 6 : 8;  // 12 or 8 accumulators of 16 registers
  int64_t i = 0;
  for (; i + MR <= M; i += MR)
    block<MR, NV>(K, a + i * a_row, a_row, a_col, b, ldb, c + i * ldc, ldc, alpha);
  const float* ai = a + i * a_row;
  float* ci = c + i * ldc;
  switch (M - i) {
    case 7: block<7, NV>(K, ai, a_row, a_col, b, ldb, ci, ldc, alpha); break;
    case 6: block<6, NV>(K, ai, a_row, a_col, b, ldb, ci, ldc, alpha); break;
    case 5: block<5, NV>(K, ai, a_row, a_col, b, ldb, ci, ldc, alpha); break;
    case 4: block<4, NV>(K, ai, a_row, a_col, b, ldb, ci, ldc, alpha); break;
    case 3: block<3, NV>(K, ai, a_row, a_col, b, ldb, ci, ldc, alpha); break;
    case 2: block<2, NV>(K, ai, a_row, a_col, b, ldb, ci, ldc, alpha); break;
    case 1: block<1, NV>(K, ai, a_row, a_col, b, ldb, ci, ldc, alpha); break;
    default: break;
  }
}

inline void gemm(int64_t M, int64_t N, int64_t K, float alpha, const float* a,
                 int64_t a_row, int64_t a_col, const float* b, int64_t ldb, float* c,
                 int64_t ldc) {
  int64_t j = 0;
  for (; j + 16 <= N; j += 16)
    panel<2>(M, K, a, a_row, a_col, b + j, ldb, c + j, ldc, alpha);
  for (; j + 8 <= N; j += 8)
    panel<1>(M, K, a, a_row, a_col, b + j, ldb, c + j, ldc, alpha);
  if (j == N) return;
  // The last N % 8 columns: B's through a zero-padded copy, C's through a tile
  const int64_t tail = N - j;
  thread_local std::vector<float> bpad, ctile;
  bpad.assign(K * 8, 0.f);
  ctile.resize(8 * 8);
  for (int64_t k = 0; k < K; ++k)
    std::memcpy(&bpad[k * 8], b + k * ldb + j, tail * sizeof(float));
  for (int64_t i = 0; i < M; i += 8) {
    const int64_t rows = M - i < 8 ? M - i : 8;
    panel<1>(rows, K, a + i * a_row, a_row, a_col, bpad.data(), 8, ctile.data(), 8, alpha);
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(c + (i + r) * ldc + j, &ctile[r * 8], tail * sizeof(float));
  }
}

// ---- packed operands ----

constexpr int kPanel = 16;  // columns of B per panel
constexpr int kRows = 6;    // rows of A per panel

// Floats that pack_weight writes for B (K, N)
inline int64_t packed_size(int64_t N, int64_t K) {
  return (N + kPanel - 1) / kPanel * kPanel * K;
}

// B = W^T for W (N, K) row-major (a Dense weight as MXNet stores it), as
// 16-column panels, each (K, 16) contiguous, the last one zero-padded
inline void pack_weight(const float* W, int64_t N, int64_t K, float* Bp) {
  for (int64_t j0 = 0; j0 < N; j0 += kPanel)
    for (int64_t k = 0; k < K; ++k)
      for (int q = 0; q < kPanel; ++q)
        Bp[j0 * K + k * kPanel + q] = j0 + q < N ? W[(j0 + q) * K + k] : 0.f;
}

// A 6 x 16 block of C = bias (16 values, or none) + A @ B over packed panels
inline void packed_block(int64_t K, const float* ap, const float* bp, const float* bias,
                         float* c, int64_t ldc) {
  const v8 init0 = bias ? *reinterpret_cast<const v8u*>(bias) : v8{};
  const v8 init1 = bias ? *reinterpret_cast<const v8u*>(bias + 8) : v8{};
  v8 acc[kRows][2];
#pragma GCC unroll 8
  for (int i = 0; i < kRows; ++i) acc[i][0] = init0, acc[i][1] = init1;
  for (int64_t k = 0; k < K; ++k) {
    const v8 b0 = *reinterpret_cast<const v8u*>(bp + k * kPanel);
    const v8 b1 = *reinterpret_cast<const v8u*>(bp + k * kPanel + 8);
#pragma GCC unroll 8
    for (int i = 0; i < kRows; ++i) {
      acc[i][0] = fma8(ap[k * kRows + i], b0, acc[i][0]);
      acc[i][1] = fma8(ap[k * kRows + i], b1, acc[i][1]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < kRows; ++i) {
    *reinterpret_cast<v8u*>(c + i * ldc) = acc[i][0];
    *reinterpret_cast<v8u*>(c + i * ldc + 8) = acc[i][1];
  }
}

// Floats pack_rows writes for A (M, K)
inline int64_t packed_rows_size(int64_t M, int64_t K) {
  return (M + kRows - 1) / kRows * kRows * K;
}

// A (M, K; row stride lda) as 6-row panels, (K, 6) each, the last zero-padded.
// With `rows`, row i of A is row rows[i] of the stored matrix.
inline void pack_rows(const float* A, int64_t M, int64_t K, int64_t lda, float* Ap,
                      const int64_t* rows = nullptr) {
  for (int64_t i0 = 0; i0 < M; i0 += kRows)
    for (int64_t k = 0; k < K; ++k)
      for (int i = 0; i < kRows; ++i) {
        const int64_t r = i0 + i;
        Ap[i0 * K + k * kRows + i] = r < M ? A[(rows ? rows[r] : r) * lda + k] : 0.f;
      }
}

// C (M, N; row stride ldc) = A @ B (+ bias (N,), if given), A from pack_rows
// and B from pack_weight
inline void gemm_prepacked(int64_t M, int64_t N, int64_t K, const float* Ap,
                           const float* Bp, const float* bias, float* C, int64_t ldc) {
  float tile[kRows * kPanel], bias_tile[kPanel];
  for (int64_t j0 = 0; j0 < N; j0 += kPanel) {
    const float* bp = Bp + j0 * K;
    const int64_t cols = N - j0 < kPanel ? N - j0 : kPanel;
    const float* b = bias ? bias + j0 : nullptr;
    if (bias && cols < kPanel) {  // the last panel's bias, zero-padded
      for (int q = 0; q < kPanel; ++q) bias_tile[q] = q < cols ? bias[j0 + q] : 0.f;
      b = bias_tile;
    }
    for (int64_t i0 = 0; i0 < M; i0 += kRows) {
      const int64_t rows = M - i0 < kRows ? M - i0 : kRows;
      float* c = C + i0 * ldc + j0;
      if (rows == kRows && cols == kPanel) {
        packed_block(K, Ap + i0 * K, bp, b, c, ldc);
      } else {  // an edge: through a whole tile
        packed_block(K, Ap + i0 * K, bp, b, tile, kPanel);
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(c + r * ldc, tile + r * kPanel, cols * sizeof(float));
      }
    }
  }
}

// C = A (M, K; row stride lda) @ B (+ bias), B from pack_weight; Ap:
// packed_rows_size(M, K) floats of scratch
inline void gemm_packed(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                        const float* Bp, const float* bias, float* C, int64_t ldc,
                        float* Ap) {
  pack_rows(A, M, K, lda, Ap);
  gemm_prepacked(M, N, K, Ap, Bp, bias, C, ldc);
}

}  // namespace small_gemm
