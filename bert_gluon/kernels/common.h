// Helpers shared by the native ops.
#pragma once
#include <cstdint>
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

// Rows of nonzero weight, in order: the ops that skip the book's padded
// prediction slots visit these.
inline std::vector<int64_t> weighted_rows(const float* w, int64_t R) {
  std::vector<int64_t> rows;
  rows.reserve(R);
  for (int64_t r = 0; r < R; ++r)
    if (w[r] != 0.f) rows.push_back(r);
  return rows;
}
