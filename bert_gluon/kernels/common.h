// Helpers shared by the native ops.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "blas.h"

// blas::to_bf16 over n floats, on all threads
inline void to_bf16_parallel(const float* x, int64_t n, blas::bf16* out) {
  constexpr int64_t kChunk = 1 << 16;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += kChunk) blas::to_bf16(x + i, n - i < kChunk ? n - i : kChunk, out + i);
}

// A boolean attribute as Python passes it (True / 1)
inline bool flag_of(const std::unordered_map<std::string, std::string>& attrs,
                    const char* name) {
  auto it = attrs.find(name);
  return it != attrs.end() && (it->second == "1" || it->second == "True");
}

// A float attribute, or fallback when it is not given
inline float float_of(const std::unordered_map<std::string, std::string>& attrs,
                      const char* name, float fallback) {
  auto it = attrs.find(name);
  return it == attrs.end() ? fallback : std::strtof(it->second.c_str(), nullptr);
}

// Rows of nonzero weight, in order: the ops that skip the book's padded
// prediction slots visit these.
inline std::vector<int64_t> weighted_rows(const float* w, int64_t R) {
  std::vector<int64_t> rows;
  rows.reserve(R);
  for (int64_t r = 0; r < R; ++r)
    if (w[r] != 0.f) rows.push_back(r);
  return rows;
}

// y = LayerNorm(x) over one row of H (y may be x); the row's mean and
// 1/std into *mean, *rstd when given
inline void layer_norm_row(const float* x, const float* gamma, const float* beta,
                           int64_t H, float eps, float* y, float* mean = nullptr,
                           float* rstd = nullptr) {
  float sum = 0.f;  // vectorized sums: 8 partial sums, then added up
#pragma omp simd reduction(+: sum)
  for (int64_t j = 0; j < H; ++j) sum += x[j];
  const float mu = sum / H;
  float sq = 0.f;
#pragma omp simd reduction(+: sq)
  for (int64_t j = 0; j < H; ++j) sq += (x[j] - mu) * (x[j] - mu);
  const float rs = 1.f / std::sqrt(sq / H + eps);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) y[j] = (x[j] - mu) * rs * gamma[j] + beta[j];
  if (mean) *mean = mu;
  if (rstd) *rstd = rs;
}
