// A Dense layer (flatten=False) for MXNet 1.9 on the CPU (extension
// library), forward and backward through blas.h, by the provider its
// `products` attribute names: float32, or bf16 operands accumulated in
// float32 (the float32 weight is the master copy the optimizer updates; it
// is converted on each call). The bias is the output's starting value,
// added by the forward product itself.
//
// Op bert_linear(X (..., K), W (N, K)[, b (N,)]; use_bias=1, products='')
//      -> Y (..., N) = X W^T (+ b)
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>
#include "mxnet/lib_api.h"
#include "common.h"

using namespace mxnet::ext;

static MXReturnValue linear_parse(const std::unordered_map<std::string, std::string>& attrs,
                                  int* num_in, int* num_out) {
  *num_in = attrs.count("use_bias") && !flag_of(attrs, "use_bias") ? 2 : 3;
  *num_out = 1;
  return products_known(attrs, "bert_linear") ? MX_SUCCESS : MX_FAIL;
}

static MXReturnValue linear_type(const std::unordered_map<std::string, std::string>& attrs,
                                 std::vector<int>* in_types, std::vector<int>* out_types) {
  return all_float32("bert_linear", in_types, out_types);
}

static MXReturnValue linear_shape(const std::unordered_map<std::string, std::string>& attrs,
                                  std::vector<std::vector<unsigned int>>* in_shapes,
                                  std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& x = (*in_shapes)[0];
  const auto& w = (*in_shapes)[1];
  const bool bias = in_shapes->size() == 3;
  if (x.empty() || w.size() != 2 || w[1] != x.back()
      || (bias && (*in_shapes)[2] != std::vector<unsigned int>{w[0]})) {
    MX_ERROR_MSG << "bert_linear: X (..., K), W (N, K), b (N,)";
    return MX_FAIL;
  }
  std::vector<unsigned int> y(x.begin(), x.end() - 1);
  y.push_back(w[0]);
  (*out_shapes)[0] = y;
  return MX_SUCCESS;
}

static MXReturnValue linear_forward(const std::unordered_map<std::string, std::string>& attrs,
                                    std::vector<MXTensor>* inputs,
                                    std::vector<MXTensor>* outputs, const OpResource& res) {
  MXTensor& Xt = (*inputs)[0];
  const int64_t K = Xt.shape.back(), M = Xt.size() / K, N = (*inputs)[1].shape[0];
  const float* X = Xt.data<float>();
  const float* W = (*inputs)[1].data<float>();
  const float* b = inputs->size() == 3 ? (*inputs)[2].data<float>() : nullptr;
  float* Y = (*outputs)[0].data<float>();
  if (M == 0) return MX_SUCCESS;
  if (b) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M; ++i) std::memcpy(Y + i * N, b, N * sizeof(float));
  }
  const float beta = b ? 1.f : 0.f;
  const blas::Products by = products_of(attrs);
  if (!blas::bf16_operands(by)) {
    blas::sgemm(by, false, true, M, N, K, 1.f, X, K, W, K, beta, Y, N);
    return MX_SUCCESS;
  }
  // one temp-space allocation per call: MXNet hands out the same buffer
  auto* x16 = static_cast<blas::bf16*>(res.alloc_cpu((M + N) * K * sizeof(blas::bf16)));
  blas::bf16* w16 = x16 + M * K;
  to_bf16_parallel(X, M * K, x16);
  to_bf16_parallel(W, N * K, w16);
  blas::gemm_bf16(by, false, true, M, N, K, 1.f, x16, K, w16, K, beta, Y, N);
  return MX_SUCCESS;
}

// inputs: dY, X, W[, b], Y.  outputs: dX, dW[, db]
static MXReturnValue linear_backward(const std::unordered_map<std::string, std::string>& attrs,
                                     std::vector<MXTensor>* inputs,
                                     std::vector<MXTensor>* outputs, const OpResource& res) {
  MXTensor& Xt = (*inputs)[1];
  const int64_t K = Xt.shape.back(), M = Xt.size() / K, N = (*inputs)[2].shape[0];
  const float* dY = (*inputs)[0].data<float>();
  const float* X = Xt.data<float>();
  const float* W = (*inputs)[2].data<float>();
  float* dX = (*outputs)[0].data<float>();
  float* dW = (*outputs)[1].data<float>();
  float* db = outputs->size() == 3 ? (*outputs)[2].data<float>() : nullptr;
  if (db) column_sums(dY, M, N, db);
  const blas::Products by = products_of(attrs);
  // one temp-space allocation per call: MXNet hands out the same buffer
  auto* scratch = blas::bf16_operands(by) ? static_cast<blas::bf16*>(
      res.alloc_cpu((M * N + N * K + M * K) * sizeof(blas::bf16))) : nullptr;
  dense_backward(M, N, K, dY, X, W, dX, dW, by, scratch);
  return MX_SUCCESS;
}

REGISTER_OP(bert_linear)
.setParseAttrs(linear_parse)
.setInferType(linear_type)
.setInferShape(linear_shape)
.setForward(linear_forward, "cpu")
.setBackward(linear_backward, "cpu");
