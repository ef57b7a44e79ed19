// One attention head at a time, for the attention ops (attention.cc) and
// the fused encoder layer (encoder_layer.cc). Queries, keys and values stay
// in their (B, T, H) layout: head n of sequence b is the column block
// [n*d, (n+1)*d) of rows b*T .. b*T+T-1, read with row stride Dims::ld.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>
#include "mxnet/lib_api.h"
#include "common.h"
#include "small_gemm.h"

extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
}

namespace heads {
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MXReturnValue;
using mxnet::ext::kFloat32;
using mxnet::ext::kInt32;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using Attrs = std::unordered_map<std::string, std::string>;

inline int heads_of(const Attrs& attrs) {
  auto it = attrs.find("num_heads");
  return it == attrs.end() ? 0 : std::atoi(it->second.c_str());
}

// Number of leading keys that position j < valid_lens[b] keeps, in [0, T]
inline int64_t kept_keys(const MXTensor& lens, int64_t b, int64_t T) {
  const float len = lens.dtype == kInt32
      ? static_cast<float>(reinterpret_cast<const int32_t*>(lens.data_ptr)[b])
      : reinterpret_cast<const float*>(lens.data_ptr)[b];
  const float first_masked = std::ceil(len);
  return first_masked <= 0.f ? 0 : first_masked >= T ? T : static_cast<int64_t>(first_masked);
}

struct Dims {
  int64_t B, T, H, N, d;
  int64_t ld;  // row stride of q, k and v (and their gradients): H, or 3H interleaved
};

inline Dims dims_of(const MXTensor& x, int num_heads) {
  Dims s{x.shape[0], x.shape[1], x.shape[2], num_heads, x.shape[2] / num_heads, x.shape[2]};
  return s;
}

inline bool check_heads(const Attrs& attrs, unsigned int H) {
  const int N = heads_of(attrs);
  if (N < 1 || H % N) {
    MX_ERROR_MSG << "bert attention: num_heads must be >= 1 and divide H = " << H;
    return false;
  }
  return true;
}

// One head's probabilities P (T, T) = masked_softmax(scale * Q K^T), Q and K
// read at row stride ld, Kt a (d, T) buffer. Returns the number of columns of
// P that can be nonzero: the kept keys, or all T when none is kept (d2l's
// softmax over T equal fill values is uniform).
inline int64_t head_probs(const float* Q, const float* K, int64_t kept, const Dims& s,
                          float scale, float* Kt, float* P) {
  if (kept == 0) {
    for (int64_t i = 0; i < s.T * s.T; ++i) P[i] = 1.f / s.T;
    return s.T;
  }
  for (int64_t j = 0; j < kept; ++j)
    for (int64_t c = 0; c < s.d; ++c) Kt[c * kept + j] = K[j * s.ld + c];
  small_gemm::gemm(s.T, kept, s.d, scale, Q, s.ld, 1, Kt, kept, P, s.T);
  for (int64_t i = 0; i < s.T; ++i) {
    // masked scores, -1e6 in d2l, have exponentials of exactly 0
    float* row = P + i * s.T;
    float m = row[0];
#pragma omp simd reduction(max: m)
    for (int64_t j = 1; j < kept; ++j) m = row[j] > m ? row[j] : m;
    float sum = 0.f;
#pragma omp simd reduction(+: sum)
    for (int64_t j = 0; j < kept; ++j) {
      row[j] = expf(row[j] - m);
      sum += row[j];
    }
    const float inv = 1.f / sum;
#pragma omp simd
    for (int64_t j = 0; j < kept; ++j) row[j] *= inv;
    for (int64_t j = kept; j < s.T; ++j) row[j] = 0.f;
  }
  return kept;
}

// One head's dQ and dK from its probabilities P and their gradient dP (both
// (T, T)): the softmax backward into dS, then dQ = dS K and dK = dS^T Q.
// Masked scores were constants: their dS is 0, so masked keys get no
// gradient and only the first `kept` keys reach dQ.
inline void head_qk_grads(const float* P, const float* dP, const float* Q, const float* K,
                          int64_t kept, const Dims& s, float scale, float* dS, float* dQ,
                          float* dK) {
  for (int64_t i = 0; i < s.T; ++i) {
    const float* p = P + i * s.T;
    const float* dp = dP + i * s.T;
    float* ds = dS + i * s.T;
    float dot = 0.f;  // over the kept keys: the others have p = 0
#pragma omp simd reduction(+: dot)
    for (int64_t j = 0; j < kept; ++j) dot += p[j] * dp[j];
#pragma omp simd
    for (int64_t j = 0; j < kept; ++j) ds[j] = scale * p[j] * (dp[j] - dot);
    for (int64_t j = kept; j < s.T; ++j) ds[j] = 0.f;
  }
  small_gemm::gemm(s.T, s.d, kept, 1.f, dS, s.T, 1, K, s.ld, dQ, s.ld);
  small_gemm::gemm(kept, s.d, s.T, 1.f, dS, 1, s.T, Q, s.ld, dK, s.ld);
  for (int64_t j = kept; j < s.T; ++j) std::memset(dK + j * s.ld, 0, s.d * sizeof(float));
}

// One head's dP = dO V^T (T, T) and dV = P^T dO, over P's first `live`
// columns (the rest are 0): Vt is a (d, T) buffer.
inline void head_pv_grads(const float* P, const float* dO, const float* V, int64_t live,
                          const Dims& s, float* Vt, float* dP, float* dV) {
  for (int64_t j = 0; j < live; ++j)
    for (int64_t c = 0; c < s.d; ++c) Vt[c * live + j] = V[j * s.ld + c];
  small_gemm::gemm(s.T, live, s.d, 1.f, dO, s.ld, 1, Vt, live, dP, s.T);
  small_gemm::gemm(live, s.d, s.T, 1.f, P, 1, s.T, dO, s.ld, dV, s.ld);
  for (int64_t j = live; j < s.T; ++j) std::memset(dV + j * s.ld, 0, s.d * sizeof(float));
}

// Per-thread scratch of `floats_each` floats (MXNet's temp space: one buffer
// per op call, however often it is asked for)
inline float* thread_scratch(const OpResource& res, int threads, int64_t floats_each) {
  return static_cast<float*>(res.alloc_cpu(threads * floats_each * sizeof(float)));
}
}  // namespace heads
