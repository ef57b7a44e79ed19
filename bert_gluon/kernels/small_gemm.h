// Register-blocked products for attention's per-head matrices (T x d x T at
// BERT's sizes: 64 x 64 x 64, or 128 x 32 x 128 for MiniLM), single-threaded
// (the ops parallelize over heads and sequences), where a BLAS call's set-up
// costs more than the arithmetic. GCC vector extensions, as wide as the CPU
// the library is built on (-march=native; the build cache is keyed by the
// CPU): 16 floats with AVX-512, else 8; each step a fused multiply-add.
//
//   C (M x N, row stride ldc) = alpha * A (M x K) @ B (K x N, row stride ldb)
//   A[i][k] = a[i * a_row + k * a_col]: a_col = 1 reads A, a_row = 1 reads
//   a stored matrix's transpose.
// The Dense layers' products are MKL's (blas.h).
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

namespace small_gemm {

#if defined(__AVX512F__)
constexpr int kW = 16;
#else
constexpr int kW = 8;
#endif
typedef float vec __attribute__((vector_size(4 * kW)));
typedef float vecu __attribute__((vector_size(4 * kW), aligned(4)));  // unaligned

// a * b + c, contracted to one FMA (GCC's default -ffp-contract=fast)
inline vec fma_v(float a, vec b, vec c) { return b * a + c; }

// An MR x (kW * NV) block of C: all of it stays in registers over the K loop.
template <int MR, int NV>
inline void block(int64_t K, const float* a, int64_t a_row, int64_t a_col,
                  const float* b, int64_t ldb, float* c, int64_t ldc, float alpha) {
  vec acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vec{};
  for (int64_t k = 0; k < K; ++k) {
    vec bk[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bk[v] = *reinterpret_cast<const vecu*>(b + k * ldb + kW * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float aik = a[i * a_row + k * a_col];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = fma_v(aik, bk[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      *reinterpret_cast<vecu*>(c + i * ldc + kW * v) = acc[i][v] * alpha;
}

// Rows [0, M) of one column panel of kW * NV columns
template <int NV>
inline void panel(int64_t M, int64_t K, const float* a, int64_t a_row, int64_t a_col,
                  const float* b, int64_t ldb, float* c, int64_t ldc, float alpha) {
  constexpr int MR = NV == 2 ? 6 : 8;  // 12 or 8 accumulators
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
  for (; j + 2 * kW <= N; j += 2 * kW)
    panel<2>(M, K, a, a_row, a_col, b + j, ldb, c + j, ldc, alpha);
  for (; j + kW <= N; j += kW)
    panel<1>(M, K, a, a_row, a_col, b + j, ldb, c + j, ldc, alpha);
  if (j == N) return;
  // The last N % kW columns: B's through a zero-padded copy, C's through a tile
  const int64_t tail = N - j;
  thread_local std::vector<float> bpad, ctile;
  bpad.assign(K * kW, 0.f);
  ctile.resize(8 * kW);
  for (int64_t k = 0; k < K; ++k)
    std::memcpy(&bpad[k * kW], b + k * ldb + j, tail * sizeof(float));
  for (int64_t i = 0; i < M; i += 8) {
    const int64_t rows = M - i < 8 ? M - i : 8;
    panel<1>(rows, K, a + i * a_row, a_row, a_col, bpad.data(), kW, ctile.data(), kW, alpha);
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(c + (i + r) * ldc + j, &ctile[r * kW], tail * sizeof(float));
  }
}

}  // namespace small_gemm
