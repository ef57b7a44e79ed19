// LayerNorm over the last axis for MXNet 1.9 on the CPU, as an extension
// library (mxnet/lib_api.h). Same numbers as npx.layer_norm; its backward is
// one fused pass per row instead of MXNet's generic broadcast/reduce kernels,
// which run ~15x slower than the forward on (8192, 128).
//
// Op bert_layer_norm(x, gamma, beta[, residual]; eps, residual=0)
//      -> (y, mean, rstd)
//   x: (..., H); gamma, beta: (H,); y like x; mean, rstd: x.shape[:-1].
//   With residual=1, y = LayerNorm(x + residual) (d2l's AddNorm) without
//   materializing the sum; both addends get the same gradient.
// mean and rstd are outputs only so the backward can reuse them.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <omp.h>
#include "mxnet/lib_api.h"
#include "common.h"

using namespace mxnet::ext;

// Row i of x (+ residual), into buf
static inline const float* row_of(const float* x, const float* r, int64_t i, int64_t H,
                                  float* buf) {
  if (!r) return x + i * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) buf[j] = x[i * H + j] + r[i * H + j];
  return buf;
}

static MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>& attrs,
                          int* num_in, int* num_out) {
  *num_in = flag_of(attrs, "residual") ? 4 : 3;
  *num_out = 3;
  return MX_SUCCESS;
}

static MXReturnValue infer_type(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<int>* in_types, std::vector<int>* out_types) {
  return all_float32("bert_layer_norm", in_types, out_types);
}

static MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& x = (*in_shapes)[0];
  if (x.empty() || (flag_of(attrs, "residual") && (*in_shapes)[3] != x)) {
    MX_ERROR_MSG << "bert_layer_norm: x needs at least one axis, residual x's shape";
    return MX_FAIL;
  }
  std::vector<unsigned int> rows(x.begin(), x.end() - 1);
  if (rows.empty()) rows.push_back(1);
  (*out_shapes)[0] = x;
  (*out_shapes)[1] = rows;
  (*out_shapes)[2] = rows;
  return MX_SUCCESS;
}

static MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs,
                      std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                      const OpResource& res) {
  const float eps = float_of(attrs, "eps", 1e-5f);
  const MXTensor& xt = (*inputs)[0];
  const int64_t H = xt.shape.back();
  const int64_t N = xt.size() / H;
  const float* x = (*inputs)[0].data<float>();
  const float* gamma = (*inputs)[1].data<float>();
  const float* beta = (*inputs)[2].data<float>();
  float* y = (*outputs)[0].data<float>();
  float* mean = (*outputs)[1].data<float>();
  float* rstd = (*outputs)[2].data<float>();
  const float* r = flag_of(attrs, "residual") ? (*inputs)[3].data<float>() : nullptr;
#pragma omp parallel if (N * H > kSerialFloats)
  {
  std::vector<float> buf(H);
#pragma omp for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    layer_norm_row(row_of(x, r, i, H, buf.data()), gamma, beta, H, eps, y + i * H,
                   mean + i, rstd + i);
  }
  }
  return MX_SUCCESS;
}

// inputs: dy, dmean, drstd (ignored), x, gamma, beta, [residual,] y, mean, rstd
// outputs: dx, dgamma, dbeta[, dresidual]
static MXReturnValue backward(const std::unordered_map<std::string, std::string>& attrs,
                       std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                       const OpResource& res) {
  const MXTensor& xt = (*inputs)[3];
  const int64_t H = xt.shape.back();
  const int64_t N = xt.size() / H;
  const float* dy = (*inputs)[0].data<float>();
  const float* x = (*inputs)[3].data<float>();
  const float* gamma = (*inputs)[4].data<float>();
  const bool residual = flag_of(attrs, "residual");
  const float* rin = residual ? (*inputs)[6].data<float>() : nullptr;
  const float* mean = (*inputs)[residual ? 8 : 7].data<float>();
  const float* rstd = (*inputs)[residual ? 9 : 8].data<float>();
  float* dx = (*outputs)[0].data<float>();
  float* dgamma = (*outputs)[1].data<float>();
  float* dbeta = (*outputs)[2].data<float>();
  const int threads = omp_get_max_threads();
  // per-thread column sums for dgamma and dbeta, added up at the end
  std::vector<float> partial(static_cast<size_t>(threads) * 2 * H, 0.f);
#pragma omp parallel num_threads(threads)
  {
    float* dg = partial.data() + static_cast<size_t>(omp_get_thread_num()) * 2 * H;
    float* db = dg + H;
    std::vector<float> buf(H);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const float* xi = row_of(x, rin, i, H, buf.data());
      const float* dyi = dy + i * H;
      float* dxi = dx + i * H;
      const float mu = mean[i], r = rstd[i];
      float sum_g = 0.f, sum_gx = 0.f;  // sums of dxhat and dxhat * xhat
#pragma omp simd reduction(+: sum_g, sum_gx)
      for (int64_t j = 0; j < H; ++j) {
        const float xhat = (xi[j] - mu) * r;
        const float g = dyi[j] * gamma[j];
        sum_g += g;
        sum_gx += g * xhat;
        dg[j] += dyi[j] * xhat;
        db[j] += dyi[j];
      }
      const float mg = sum_g / H, mgx = sum_gx / H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const float xhat = (xi[j] - mu) * r;
        dxi[j] = r * (dyi[j] * gamma[j] - mg - xhat * mgx);
      }
    }
  }
  for (int64_t j = 0; j < H; ++j) {
    float g = 0.f, b = 0.f;
    for (int t = 0; t < threads; ++t) {
      g += partial[static_cast<size_t>(t) * 2 * H + j];
      b += partial[static_cast<size_t>(t) * 2 * H + H + j];
    }
    dgamma[j] = g;
    dbeta[j] = b;
  }
  if (residual)  // the sum's two addends share its gradient
    std::memcpy((*outputs)[3].data<float>(), dx, N * H * sizeof(float));
  return MX_SUCCESS;
}

REGISTER_OP(bert_layer_norm)
.setParseAttrs(parse_attrs)
.setInferType(infer_type)
.setInferShape(infer_shape)
.setForward(forward, "cpu")
.setBackward(backward, "cpu");
