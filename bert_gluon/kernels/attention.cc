// Multi-head self-attention without the head split/merge transposes, for
// MXNet 1.9 on the CPU (extension library). Queries, keys and values stay in
// their (B, T, H) layout: head n of sequence b is the column block
// [n*d, (n+1)*d) of rows b*T .. b*T+T-1, read with row stride H. The per-head
// products go through small_gemm.h: at 64 x 64 x 64 a BLAS call costs more
// in setup than in arithmetic. Keys past valid_lens are never multiplied.
// Two ops are d2l's DotProductAttention split around its dropout:
//
// Op bert_attention_scores(q (B, T, H), k (B, T, H), valid_lens (B,);
//                          num_heads, scale) -> probs (B, N, T, T)
//   masked_softmax(scale * Q K^T): keys at positions >= valid_lens[b] get
//   -1e6 before the softmax (d2l's value, so their weights are exactly 0).
// Op bert_attention_context(probs (B, N, T, T), v (B, T, H); num_heads)
//   -> (B, T, H): each head's probs @ V, written into its column block.
// One op is the whole of it where there is no dropout (inference):
// Op bert_attention(q, k, v (B, T, H), valid_lens (B,); num_heads, scale)
//   -> (B, T, H), each head's (T, T) probabilities only ever in a per-thread
//   buffer; its backward computes them again rather than keep them.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <omp.h>
#include "mxnet/lib_api.h"
#include "common.h"
#include "small_gemm.h"

extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
}

using namespace mxnet::ext;
using Attrs = std::unordered_map<std::string, std::string>;

namespace {

int heads_of(const Attrs& attrs) {
  auto it = attrs.find("num_heads");
  return it == attrs.end() ? 0 : std::atoi(it->second.c_str());
}

float scale_of(const Attrs& attrs) {
  auto it = attrs.find("scale");
  return it == attrs.end() ? 1.f : std::strtof(it->second.c_str(), nullptr);
}

// Number of leading keys that position j < valid_lens[b] keeps, in [0, T]
int64_t kept_keys(const MXTensor& lens, int64_t b, int64_t T) {
  const float len = lens.dtype == kInt32
      ? static_cast<float>(reinterpret_cast<const int32_t*>(lens.data_ptr)[b])
      : reinterpret_cast<const float*>(lens.data_ptr)[b];
  const float first_masked = std::ceil(len);
  return first_masked <= 0.f ? 0 : first_masked >= T ? T : static_cast<int64_t>(first_masked);
}

struct Dims {
  int64_t B, T, H, N, d;
};

Dims dims_of(const MXTensor& x, int num_heads) {
  Dims s{x.shape[0], x.shape[1], x.shape[2], num_heads, x.shape[2] / num_heads};
  return s;
}

bool check_heads(const Attrs& attrs, unsigned int H) {
  const int N = heads_of(attrs);
  if (N < 1 || H % N) {
    MX_ERROR_MSG << "bert attention: num_heads must be >= 1 and divide H = " << H;
    return false;
  }
  return true;
}

MXReturnValue all_float32(const char* op, std::vector<int>* in_types,
                          std::vector<int>* out_types, int int_ok) {
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
// One head's probabilities P (T, T) = masked_softmax(scale * Q K^T), Q and K
// read at row stride H, Kt a (d, T) buffer. Returns the number of columns of
// P that can be nonzero: the kept keys, or all T when none is kept (d2l's
// softmax over T equal fill values is uniform).
int64_t head_probs(const float* Q, const float* K, int64_t kept, const Dims& s,
                   float scale, float* Kt, float* P) {
  if (kept == 0) {
    for (int64_t i = 0; i < s.T * s.T; ++i) P[i] = 1.f / s.T;
    return s.T;
  }
  for (int64_t j = 0; j < kept; ++j)
    for (int64_t c = 0; c < s.d; ++c) Kt[c * kept + j] = K[j * s.H + c];
  small_gemm::gemm(s.T, kept, s.d, scale, Q, s.H, 1, Kt, kept, P, s.T);
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
void head_qk_grads(const float* P, const float* dP, const float* Q, const float* K,
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
  small_gemm::gemm(s.T, s.d, kept, 1.f, dS, s.T, 1, K, s.H, dQ, s.H);
  small_gemm::gemm(kept, s.d, s.T, 1.f, dS, 1, s.T, Q, s.H, dK, s.H);
  for (int64_t j = kept; j < s.T; ++j) std::memset(dK + j * s.H, 0, s.d * sizeof(float));
}

// One head's dP = dO V^T (T, T) and dV = P^T dO, over P's first `live`
// columns (the rest are 0): Vt is a (d, T) buffer.
void head_pv_grads(const float* P, const float* dO, const float* V, int64_t live,
                   const Dims& s, float* Vt, float* dP, float* dV) {
  for (int64_t j = 0; j < live; ++j)
    for (int64_t c = 0; c < s.d; ++c) Vt[c * live + j] = V[j * s.H + c];
  small_gemm::gemm(s.T, live, s.d, 1.f, dO, s.H, 1, Vt, live, dP, s.T);
  small_gemm::gemm(live, s.d, s.T, 1.f, P, 1, s.T, dO, s.H, dV, s.H);
  for (int64_t j = live; j < s.T; ++j) std::memset(dV + j * s.H, 0, s.d * sizeof(float));
}

// Per-thread scratch of `floats_each` floats (MXNet's temp space: one buffer
// per op call, however often it is asked for)
float* thread_scratch(const OpResource& res, int threads, int64_t floats_each) {
  return static_cast<float*>(res.alloc_cpu(threads * floats_each * sizeof(float)));
}
}  // namespace

// ---- bert_attention_scores ----

static MXReturnValue scores_parse(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 1;
  return MX_SUCCESS;
}

static MXReturnValue scores_type(const Attrs& attrs, std::vector<int>* in_types,
                                 std::vector<int>* out_types) {
  return all_float32("bert_attention_scores", in_types, out_types, 2);
}

static MXReturnValue scores_shape(const Attrs& attrs,
                                  std::vector<std::vector<unsigned int>>* in_shapes,
                                  std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& q = (*in_shapes)[0];
  if (q.size() != 3 || (*in_shapes)[1] != q || (*in_shapes)[2].size() != 1
      || (*in_shapes)[2][0] != q[0]) {
    MX_ERROR_MSG << "bert_attention_scores: q and k (B, T, H), valid_lens (B,)";
    return MX_FAIL;
  }
  if (!check_heads(attrs, q[2])) return MX_FAIL;
  const unsigned int N = heads_of(attrs);
  (*out_shapes)[0] = {q[0], N, q[1], q[1]};
  return MX_SUCCESS;
}

static MXReturnValue scores_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                    std::vector<MXTensor>* outputs, const OpResource& res) {
  const Dims s = dims_of((*inputs)[0], heads_of(attrs));
  const float scale = scale_of(attrs);
  const float* q = (*inputs)[0].data<float>();
  const float* k = (*inputs)[1].data<float>();
  const MXTensor& lens = (*inputs)[2];
  float* probs = (*outputs)[0].data<float>();
  const int threads = omp_get_max_threads();
  float* scratch = thread_scratch(res, threads, s.d * s.T);  // K^T per thread
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t bn = 0; bn < s.B * s.N; ++bn) {
    const int64_t b = bn / s.N, offset = b * s.T * s.H + (bn % s.N) * s.d;
    head_probs(q + offset, k + offset, kept_keys(lens, b, s.T), s, scale,
               scratch + omp_get_thread_num() * s.d * s.T, probs + bn * s.T * s.T);
  }
  return MX_SUCCESS;
}

// inputs: dprobs, q, k, valid_lens, probs.  outputs: dq, dk, dvalid_lens
static MXReturnValue scores_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                     std::vector<MXTensor>* outputs, const OpResource& res) {
  const Dims s = dims_of((*inputs)[1], heads_of(attrs));
  const float scale = scale_of(attrs);
  const float* dprobs = (*inputs)[0].data<float>();
  const float* q = (*inputs)[1].data<float>();
  const float* k = (*inputs)[2].data<float>();
  const MXTensor& lens = (*inputs)[3];
  const float* probs = (*inputs)[4].data<float>();
  float* dq = (*outputs)[0].data<float>();
  float* dk = (*outputs)[1].data<float>();
  std::memset((*outputs)[2].data_ptr, 0, s.B * 4);  // valid_lens: no gradient
  const int threads = omp_get_max_threads();
  float* scratch = thread_scratch(res, threads, s.T * s.T);  // dS per thread
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t bn = 0; bn < s.B * s.N; ++bn) {
    const int64_t b = bn / s.N, offset = b * s.T * s.H + (bn % s.N) * s.d;
    head_qk_grads(probs + bn * s.T * s.T, dprobs + bn * s.T * s.T, q + offset, k + offset,
                  kept_keys(lens, b, s.T), s, scale,
                  scratch + omp_get_thread_num() * s.T * s.T, dq + offset, dk + offset);
  }
  return MX_SUCCESS;
}

// ---- bert_attention_context ----

static MXReturnValue context_parse(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

static MXReturnValue context_type(const Attrs& attrs, std::vector<int>* in_types,
                                  std::vector<int>* out_types) {
  return all_float32("bert_attention_context", in_types, out_types, -1);
}

static MXReturnValue context_shape(const Attrs& attrs,
                                   std::vector<std::vector<unsigned int>>* in_shapes,
                                   std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& p = (*in_shapes)[0];
  const auto& v = (*in_shapes)[1];
  if (v.size() != 3 || !check_heads(attrs, v[2])) {
    if (v.size() != 3) MX_ERROR_MSG << "bert_attention_context: v (B, T, H)";
    return MX_FAIL;
  }
  const unsigned int N = heads_of(attrs);
  if (p != std::vector<unsigned int>{v[0], N, v[1], v[1]}) {
    MX_ERROR_MSG << "bert_attention_context: probs (B, num_heads, T, T) for v (B, T, H)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = v;
  return MX_SUCCESS;
}

static MXReturnValue context_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                     std::vector<MXTensor>* outputs, const OpResource& res) {
  const Dims s = dims_of((*inputs)[1], heads_of(attrs));
  const float* probs = (*inputs)[0].data<float>();
  const float* v = (*inputs)[1].data<float>();
  float* out = (*outputs)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t bn = 0; bn < s.B * s.N; ++bn) {
    const int64_t offset = (bn / s.N) * s.T * s.H + (bn % s.N) * s.d;
    small_gemm::gemm(s.T, s.d, s.T, 1.f, probs + bn * s.T * s.T, s.T, 1, v + offset, s.H,
                     out + offset, s.H);
  }
  return MX_SUCCESS;
}

// inputs: dout, probs, v, out.  outputs: dprobs, dv
static MXReturnValue context_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                      std::vector<MXTensor>* outputs, const OpResource& res) {
  const Dims s = dims_of((*inputs)[2], heads_of(attrs));
  const float* dout = (*inputs)[0].data<float>();
  const float* probs = (*inputs)[1].data<float>();
  const float* v = (*inputs)[2].data<float>();
  float* dprobs = (*outputs)[0].data<float>();
  float* dv = (*outputs)[1].data<float>();
  const int threads = omp_get_max_threads();
  float* scratch = thread_scratch(res, threads, s.d * s.T);  // V^T per thread
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t bn = 0; bn < s.B * s.N; ++bn) {
    const int64_t offset = (bn / s.N) * s.T * s.H + (bn % s.N) * s.d;
    // probs may be any (B, N, T, T): every column counts
    head_pv_grads(probs + bn * s.T * s.T, dout + offset, v + offset, s.T, s,
                  scratch + omp_get_thread_num() * s.d * s.T, dprobs + bn * s.T * s.T,
                  dv + offset);
  }
  return MX_SUCCESS;
}

// ---- bert_attention ----

static MXReturnValue fused_parse(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 4;
  *num_out = 1;
  return MX_SUCCESS;
}

static MXReturnValue fused_type(const Attrs& attrs, std::vector<int>* in_types,
                                std::vector<int>* out_types) {
  return all_float32("bert_attention", in_types, out_types, 3);
}

static MXReturnValue fused_shape(const Attrs& attrs,
                                 std::vector<std::vector<unsigned int>>* in_shapes,
                                 std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& q = (*in_shapes)[0];
  if (q.size() != 3 || (*in_shapes)[1] != q || (*in_shapes)[2] != q
      || (*in_shapes)[3].size() != 1 || (*in_shapes)[3][0] != q[0]) {
    MX_ERROR_MSG << "bert_attention: q, k and v (B, T, H), valid_lens (B,)";
    return MX_FAIL;
  }
  if (!check_heads(attrs, q[2])) return MX_FAIL;
  (*out_shapes)[0] = q;
  return MX_SUCCESS;
}

static MXReturnValue fused_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                   std::vector<MXTensor>* outputs, const OpResource& res) {
  const Dims s = dims_of((*inputs)[0], heads_of(attrs));
  const float scale = scale_of(attrs);
  const float* q = (*inputs)[0].data<float>();
  const float* k = (*inputs)[1].data<float>();
  const float* v = (*inputs)[2].data<float>();
  const MXTensor& lens = (*inputs)[3];
  float* out = (*outputs)[0].data<float>();
  const int threads = omp_get_max_threads();
  const int64_t each = s.d * s.T + s.T * s.T;  // K^T and P per thread
  float* scratch = thread_scratch(res, threads, each);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t bn = 0; bn < s.B * s.N; ++bn) {
    const int64_t b = bn / s.N, offset = b * s.T * s.H + (bn % s.N) * s.d;
    float* Kt = scratch + omp_get_thread_num() * each;
    float* P = Kt + s.d * s.T;
    const int64_t live = head_probs(q + offset, k + offset, kept_keys(lens, b, s.T), s,
                                    scale, Kt, P);
    small_gemm::gemm(s.T, s.d, live, 1.f, P, s.T, 1, v + offset, s.H, out + offset, s.H);
  }
  return MX_SUCCESS;
}

// inputs: dout, q, k, v, valid_lens, out.  outputs: dq, dk, dv, dvalid_lens
static MXReturnValue fused_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                    std::vector<MXTensor>* outputs, const OpResource& res) {
  const Dims s = dims_of((*inputs)[1], heads_of(attrs));
  const float scale = scale_of(attrs);
  const float* dout = (*inputs)[0].data<float>();
  const float* q = (*inputs)[1].data<float>();
  const float* k = (*inputs)[2].data<float>();
  const float* v = (*inputs)[3].data<float>();
  const MXTensor& lens = (*inputs)[4];
  float* dq = (*outputs)[0].data<float>();
  float* dk = (*outputs)[1].data<float>();
  float* dv = (*outputs)[2].data<float>();
  std::memset((*outputs)[3].data_ptr, 0, s.B * 4);  // valid_lens: no gradient
  const int threads = omp_get_max_threads();
  const int64_t each = s.d * s.T + 3 * s.T * s.T;  // K^T or V^T, P, dP, dS
  float* scratch = thread_scratch(res, threads, each);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t bn = 0; bn < s.B * s.N; ++bn) {
    const int64_t b = bn / s.N, offset = b * s.T * s.H + (bn % s.N) * s.d;
    float* Xt = scratch + omp_get_thread_num() * each;
    float* P = Xt + s.d * s.T;
    float* dP = P + s.T * s.T;
    float* dS = dP + s.T * s.T;
    const int64_t kept = kept_keys(lens, b, s.T);
    const int64_t live = head_probs(q + offset, k + offset, kept, s, scale, Xt, P);
    head_pv_grads(P, dout + offset, v + offset, live, s, Xt, dP, dv + offset);
    head_qk_grads(P, dP, q + offset, k + offset, kept, s, scale, dS, dq + offset,
                  dk + offset);
  }
  return MX_SUCCESS;
}

REGISTER_OP(bert_attention_scores)
.setParseAttrs(scores_parse)
.setInferType(scores_type)
.setInferShape(scores_shape)
.setForward(scores_forward, "cpu")
.setBackward(scores_backward, "cpu");

REGISTER_OP(bert_attention_context)
.setParseAttrs(context_parse)
.setInferType(context_type)
.setInferShape(context_shape)
.setForward(context_forward, "cpu")
.setBackward(context_backward, "cpu");

REGISTER_OP(bert_attention)
.setParseAttrs(fused_parse)
.setInferType(fused_type)
.setInferShape(fused_shape)
.setForward(fused_forward, "cpu")
.setBackward(fused_backward, "cpu");
