// Dropout for the training graph, for MXNet 1.9 on the CPU (extension
// library). MXNet's CPU Dropout draws a Mersenne-Twister number
// per element; this op hashes (seed, index) instead (forward + backward ~4x
// faster, bench/bench_kernels.py) and keeps no mask: the backward rebuilds it.
// The seed comes from MXNet's random state, so mx.random.seed makes runs
// (and resumed runs) repeat exactly.
//
// Op bert_dropout(x; p) -> (y, seed (1,) int32)
//   y = x * keep / (1 - p), keep ~ Bernoulli(1 - p) per element; always on
//   (extension ops cannot see autograd's train mode: the caller decides).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>
#include "mxnet/lib_api.h"

using namespace mxnet::ext;
using Attrs = std::unordered_map<std::string, std::string>;

namespace {
float rate_of(const Attrs& attrs) {
  auto it = attrs.find("p");
  return it == attrs.end() ? 0.f : std::strtof(it->second.c_str(), nullptr);
}

// Keep element i when its hash falls below (1 - p) * 2^32 (lowbias32's mixer)
inline uint32_t mix(uint32_t seed, uint32_t i) {
  uint32_t h = seed ^ (i * 0x9E3779B9u);
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  return h;
}

uint32_t threshold_of(float p) {
  const double keep = 1.0 - static_cast<double>(p);
  return keep >= 1.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(keep * 4294967296.0);
}

void apply(const float* in, float* out, int64_t n, uint32_t seed, float p) {
  const uint32_t threshold = threshold_of(p);
  const float scale = 1.f / (1.f - p);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {  // branch-free, so it vectorizes
    const float keep = mix(seed, static_cast<uint32_t>(i)) < threshold ? scale : 0.f;
    out[i] = in[i] * keep;
  }
}
}  // namespace

static MXReturnValue dropout_parse(const Attrs& attrs, int* num_in, int* num_out) {
  const float p = rate_of(attrs);
  if (!(p >= 0.f && p < 1.f)) {
    MX_ERROR_MSG << "bert_dropout: p must be in [0, 1), got " << p;
    return MX_FAIL;
  }
  *num_in = 1;
  *num_out = 2;
  return MX_SUCCESS;
}

static MXReturnValue dropout_type(const Attrs& attrs, std::vector<int>* in_types,
                                  std::vector<int>* out_types) {
  if ((*in_types)[0] != kFloat32) {
    MX_ERROR_MSG << "bert_dropout takes float32 input";
    return MX_FAIL;
  }
  (*out_types)[0] = kFloat32;
  (*out_types)[1] = kInt32;
  return MX_SUCCESS;
}

static MXReturnValue dropout_shape(const Attrs& attrs,
                                   std::vector<std::vector<unsigned int>>* in_shapes,
                                   std::vector<std::vector<unsigned int>>* out_shapes) {
  (*out_shapes)[0] = (*in_shapes)[0];
  (*out_shapes)[1] = {1};
  return MX_SUCCESS;
}

static MXReturnValue dropout_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                     std::vector<MXTensor>* outputs, const OpResource& res) {
  const uint32_t seed = res.get_cpu_rand_states()[0]();
  *(*outputs)[1].data<int32_t>() = static_cast<int32_t>(seed);
  apply((*inputs)[0].data<float>(), (*outputs)[0].data<float>(), (*inputs)[0].size(),
        seed, rate_of(attrs));
  return MX_SUCCESS;
}

// inputs: dy, dseed, x, y, seed.  outputs: dx
static MXReturnValue dropout_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                      std::vector<MXTensor>* outputs, const OpResource& res) {
  const uint32_t seed = static_cast<uint32_t>(*(*inputs)[4].data<int32_t>());
  apply((*inputs)[0].data<float>(), (*outputs)[0].data<float>(), (*inputs)[0].size(),
        seed, rate_of(attrs));
  return MX_SUCCESS;
}

REGISTER_OP(bert_dropout)
.setParseAttrs(dropout_parse)
.setInferType(dropout_type)
.setInferShape(dropout_shape)
.setForward(dropout_forward, "cpu")
.setBackward(dropout_backward, "cpu");
