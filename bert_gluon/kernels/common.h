// Helpers shared by the native ops.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"
#include "blas.h"

// blas::to_bf16 over n floats, on all threads
inline void to_bf16_parallel(const float* x, int64_t n, blas::bf16* out) {
  constexpr int64_t kChunk = 1 << 16;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += kChunk) blas::to_bf16(x + i, n - i < kChunk ? n - i : kChunk, out + i);
}

// db (N,) = the column sums of dY (M, N), a block of columns per task
inline void column_sums(const float* dY, int64_t M, int64_t N, float* db) {
#pragma omp parallel for schedule(static)
  for (int64_t j0 = 0; j0 < N; j0 += 64) {
    const int64_t j1 = j0 + 64 < N ? j0 + 64 : N;
    for (int64_t j = j0; j < j1; ++j) db[j] = 0.f;
    for (int64_t i = 0; i < M; ++i) {
      const float* di = dY + i * N;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) db[j] += di[j];
    }
  }
}

// The products of a Dense layer's backward, Y (M, N) = X (M, K) W^T:
// dX = dY W and dW = dY^T X by `by`: in float32, or in bf16 on copies of
// dY, W and X made in `scratch` ((M * N + N * K + M * K) bf16)
inline void dense_backward(int64_t M, int64_t N, int64_t K, const float* dY, const float* X,
                           const float* W, float* dX, float* dW, blas::Products by,
                           blas::bf16* scratch) {
  if (!blas::bf16_operands(by)) {
    blas::sgemm(by, false, false, M, K, N, 1.f, dY, N, W, K, 0.f, dX, K);
    blas::sgemm(by, true, false, N, K, M, 1.f, dY, N, X, K, 0.f, dW, K);
    return;
  }
  blas::bf16 *dy16 = scratch, *w16 = dy16 + M * N, *x16 = w16 + N * K;
  to_bf16_parallel(dY, M * N, dy16);
  to_bf16_parallel(W, N * K, w16);
  to_bf16_parallel(X, M * K, x16);
  blas::gemm_bf16(by, false, false, M, K, N, 1.f, dy16, N, w16, K, 0.f, dX, K);
  blas::gemm_bf16(by, true, false, N, K, M, 1.f, dy16, N, x16, K, 0.f, dW, K);
}

// Type inference of an op whose inputs are float32 (input int_ok may be
// int32) and whose outputs are float32; anything else fails naming the op
inline mxnet::ext::MXReturnValue all_float32(const char* op, std::vector<int>* in_types,
                                             std::vector<int>* out_types, int int_ok = -1) {
  using namespace mxnet::ext;
  for (size_t i = 0; i < in_types->size(); ++i) {
    const int t = (*in_types)[i];
    if (t != kFloat32 && !(static_cast<int>(i) == int_ok && t == kInt32)) {
      MX_ERROR_MSG << op << " takes float32 inputs";
      return MX_FAIL;
    }
  }
  for (auto& t : *out_types) t = kFloat32;
  return MX_SUCCESS;
}

// A boolean attribute as Python passes it (True / 1)
inline bool flag_of(const std::unordered_map<std::string, std::string>& attrs,
                    const char* name) {
  auto it = attrs.find(name);
  return it != attrs.end() && (it->second == "1" || it->second == "True");
}

// The `products` attributes: who multiplies, in what (blas.h). The Python
// side's kernels.PRODUCTS is the same table, checked against this one
// (bert_gluon_products) when the library loads.
struct ProductsName {
  const char* name;
  blas::Products by;
};
constexpr ProductsName kProducts[] = {{"", blas::Products::blas},
                                      {"onednn", blas::Products::onednn},
                                      {"onednn-bf16", blas::Products::onednn_bf16},
                                      {"mkl-bf16", blas::Products::mkl_bf16},
                                      {"onednn-int8", blas::Products::onednn_int8}};

// An op's `products` attribute (or another of its kind) as a provider
// (checked at parse time); an absent `request_products` is `products`
inline blas::Products products_of(const std::unordered_map<std::string, std::string>& attrs,
                                  const char* attribute = "products") {
  auto it = attrs.find(attribute);
  if (it == attrs.end() && std::string(attribute) != "products") it = attrs.find("products");
  const std::string name = it == attrs.end() ? "" : it->second;
  for (const auto& known : kProducts)
    if (name == known.name) return known.by;
  return blas::Products::blas;
}

// Parse-time check of the `products` attribute (or another of its kind) of
// op `op`; int8 products only where `int8` (the fused encoder ops: inference)
inline bool products_known(const std::unordered_map<std::string, std::string>& attrs,
                           const char* op, const char* attribute = "products",
                           bool int8 = false) {
  auto it = attrs.find(attribute);
  if (it == attrs.end()) return true;
  std::string names;
  for (const auto& known : kProducts) {
    if (blas::int8_operands(known.by) && !int8) continue;
    if (it->second == known.name) return true;
    names += std::string(names.empty() ? "'" : ", '") + known.name + "'";
  }
  MX_ERROR_MSG << op << ": " << attribute << " must be one of " << names << ", got '"
               << it->second << "'";
  return false;
}

// A float attribute, or fallback when it is not given
inline float float_of(const std::unordered_map<std::string, std::string>& attrs,
                      const char* name, float fallback) {
  auto it = attrs.find(name);
  return it == attrs.end() ? fallback : std::strtof(it->second.c_str(), nullptr);
}

// Work below this many floats runs on the calling thread: a team's wake-up
// (tens of microseconds where MXNet's other OpenMP teams make it sleep)
// costs more than a request's small steps
constexpr int64_t kSerialFloats = 1 << 16;

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
