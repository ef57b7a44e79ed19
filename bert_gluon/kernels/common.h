// Helpers shared by the native ops.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

extern "C" {
// OpenBLAS, the copy MXNet itself links (libopenblas.so.0 beside libmxnet.so);
// only the ops built with it (kernels/__init__.py: _BLAS_SOURCES) call it.
void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k,
                 float alpha, const float* a, int lda, const float* b, int ldb,
                 float beta, float* c, int ldc);
}

enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };

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
