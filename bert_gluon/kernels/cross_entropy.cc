// Weighted softmax cross-entropy over the last axis for MXNet 1.9 on the CPU
// (extension library). MXNet's log_softmax backward on the MLM logits
// (1280 x 20256 per 128 pairs) takes several times its forward; this op does
// forward and backward in one vectorized pass each and skips rows of weight 0
// (the book's padded prediction slots).
//
// Op bert_softmax_ce(logits (..., V), labels (...), weights (...); packed=0)
//      -> (loss (...) = weights * -log_softmax(logits)[label], lse (R,))
// for the R rows of logits; labels and weights hold R values each. With
// packed=1, logits row k belongs to the k-th label of nonzero weight
// (bert_dense's packed layout).
// lse (log-sum-exp of each row) is an output only so the backward reuses it.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>
#include "mxnet/lib_api.h"
#include "common.h"

// glibc's libmvec holds vector expf/logf: declared so GCC vectorizes the
// loops below without -ffast-math (whose other liberties we do not want).
extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
float logf(float);
}

using namespace mxnet::ext;

static MXReturnValue ce_parse(const std::unordered_map<std::string, std::string>& attrs,
                              int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 2;
  return MX_SUCCESS;
}

static MXReturnValue ce_type(const std::unordered_map<std::string, std::string>& attrs,
                             std::vector<int>* in_types, std::vector<int>* out_types) {
  if ((*in_types)[0] != kFloat32 || (*in_types)[2] != kFloat32) {
    MX_ERROR_MSG << "bert_softmax_ce takes float32 logits and weights";
    return MX_FAIL;
  }
  if ((*in_types)[1] != kInt32 && (*in_types)[1] != kFloat32 && (*in_types)[1] != kInt64) {
    MX_ERROR_MSG << "bert_softmax_ce takes int32, int64 or float32 labels";
    return MX_FAIL;
  }
  (*out_types)[0] = (*out_types)[1] = kFloat32;
  return MX_SUCCESS;
}

static MXReturnValue ce_shape(const std::unordered_map<std::string, std::string>& attrs,
                              std::vector<std::vector<unsigned int>>* in_shapes,
                              std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& x = (*in_shapes)[0];
  const auto& labels = (*in_shapes)[1];
  unsigned int R = 1, rows = 1;
  for (unsigned int d : labels) R *= d;
  for (size_t i = 0; i + 1 < x.size(); ++i) rows *= x[i];
  if (x.size() < 2 || rows != R || (*in_shapes)[2] != labels) {
    MX_ERROR_MSG << "bert_softmax_ce: logits (..., V) of R rows, labels and "
                    "weights of one shape with R values";
    return MX_FAIL;
  }
  (*out_shapes)[0] = labels;
  (*out_shapes)[1] = {R};
  return MX_SUCCESS;
}

static int64_t label_at(const MXTensor& labels, int64_t i) {
  switch (labels.dtype) {
    case kInt32: return reinterpret_cast<const int32_t*>(labels.data_ptr)[i];
    case kInt64: return reinterpret_cast<const int64_t*>(labels.data_ptr)[i];
    default: return static_cast<int64_t>(reinterpret_cast<const float*>(labels.data_ptr)[i]);
  }
}

static MXReturnValue ce_forward(const std::unordered_map<std::string, std::string>& attrs,
                                std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                                const OpResource& res) {
  const int64_t V = (*inputs)[0].shape.back(), R = (*inputs)[0].size() / V;
  const float* x = (*inputs)[0].data<float>();
  const float* w = (*inputs)[2].data<float>();
  float* loss = (*outputs)[0].data<float>();
  float* lse = (*outputs)[1].data<float>();
  const bool packed = flag_of(attrs, "packed");
  // padded slots (weight 0) contribute nothing
  const std::vector<int64_t> rows = weighted_rows(w, R);
  const int64_t n = rows.size();
  std::fill(loss, loss + R, 0.f);
  std::fill(lse, lse + R, 0.f);
  bool bad_label = false;
#pragma omp parallel for schedule(dynamic, 8) reduction(||: bad_label)
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = rows[k], y = label_at((*inputs)[1], i);
    if (y < 0 || y >= V) {
      bad_label = true;
      continue;
    }
    const float* xi = x + (packed ? k : i) * V;
    float m = xi[0];
#pragma omp simd reduction(max: m)
    for (int64_t j = 1; j < V; ++j) m = xi[j] > m ? xi[j] : m;
    float sum = 0.f;
#pragma omp simd reduction(+: sum)
    for (int64_t j = 0; j < V; ++j) sum += expf(xi[j] - m);
    lse[i] = m + logf(sum);
    loss[i] = w[i] * (lse[i] - xi[y]);  // lse by label row, packed or not
  }
  if (bad_label) {
    MX_ERROR_MSG << "bert_softmax_ce: a label of a weighted row is outside [0, V)";
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

// inputs: dloss, dlse (ignored), logits, labels, weights, loss, lse
// outputs: dlogits, dlabels (zeros), dweights
static MXReturnValue ce_backward(const std::unordered_map<std::string, std::string>& attrs,
                                 std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                                 const OpResource& res) {
  const int64_t V = (*inputs)[2].shape.back(), R = (*inputs)[2].size() / V;
  const float* dloss = (*inputs)[0].data<float>();
  const float* x = (*inputs)[2].data<float>();
  const float* w = (*inputs)[4].data<float>();
  const float* lse = (*inputs)[6].data<float>();
  float* dx = (*outputs)[0].data<float>();
  float* dw = (*outputs)[2].data<float>();
  const int64_t label_bytes = (*outputs)[1].dtype == kInt64 ? 8 : 4;
  std::memset((*outputs)[1].data_ptr, 0, R * label_bytes);  // labels get no gradient
  std::memset(dw, 0, R * sizeof(float));
  const bool packed = flag_of(attrs, "packed");
  const std::vector<int64_t> rows = weighted_rows(w, R);
  const int64_t n = rows.size();
  // rows of dlogits that no weighted label owns are zero
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < R; ++i)
    if (packed ? i >= n : w[i] == 0.f) std::memset(dx + i * V, 0, V * sizeof(float));
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = rows[k], y = label_at((*inputs)[3], i);
    float* dxi = dx + (packed ? k : i) * V;
    const float* xi = x + (packed ? k : i) * V;
    const float scale = dloss[i] * w[i], l = lse[i];
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) dxi[j] = scale * expf(xi[j] - l);
    dxi[y] -= scale;
    dw[i] = dloss[i] * (l - xi[y]);
  }
  return MX_SUCCESS;
}

REGISTER_OP(bert_softmax_ce)
.setParseAttrs(ce_parse)
.setInferType(ce_type)
.setInferShape(ce_shape)
.setForward(ce_forward, "cpu")
.setBackward(ce_backward, "cpu");
