// Multi-head self-attention without the head split/merge transposes, for
// MXNet 1.9 on the CPU (extension library). Queries, keys and values stay in
// their (B, T, H) layout (heads.h). The per-head products go through
// small_gemm.h: at 64 x 64 x 64 a BLAS call costs more in setup than in
// arithmetic. Keys past valid_lens are never multiplied.
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
#include "heads.h"

using namespace mxnet::ext;
using namespace heads;

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
  const float scale = float_of(attrs, "scale", 1.f);
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
  const float scale = float_of(attrs, "scale", 1.f);
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
  return all_float32("bert_attention_context", in_types, out_types);
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
  const float scale = float_of(attrs, "scale", 1.f);
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
  const float scale = float_of(attrs, "scale", 1.f);
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
