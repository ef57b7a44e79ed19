// The MLM head's vocabulary projection, for MXNet 1.9 on the CPU (extension
// library), its products from blas.h by the provider its `products` attribute
// names: float32, or bf16 operands accumulated in float32. The float32 weight
// is the master copy the optimizer updates: oneDNN's products reorder (and
// convert) it once per version of it (prepared.h), MKL's convert it per call.
// The projection is most of a pretraining step's FLOPs, and the book pads
// every sequence to 10 slots, of which ~30% have weight 0 on WikiText-2; with
// packed=1 the op projects only the rows of nonzero weight, packed at the top
// of its output (bert_softmax_ce(..., packed=1) reads that layout).
//
// Op bert_dense(X (..., H), W (V, H), b (V,)[, weights (...)]; packed=0, products='')
//      -> Y (..., V) = X W^T + b.
//   packed=1 takes weights and, in row-major order over the leading axes,
//   writes row k = X[r_k] W^T + b for the k-th row r_k of nonzero weight;
//   later rows are unspecified. weights get no gradient.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>
#include <omp.h>
#include "mxnet/lib_api.h"
#include "common.h"
#include "prepared.h"
#include "blas.h"

using namespace mxnet::ext;

namespace {
void gather(const float* x, const std::vector<int64_t>& rows, int64_t H, float* out) {
  const int64_t n = rows.size();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(out + i * H, x + rows[i] * H, H * sizeof(float));
}
}  // namespace

static MXReturnValue pd_parse(const std::unordered_map<std::string, std::string>& attrs,
                              int* num_in, int* num_out) {
  *num_in = flag_of(attrs, "packed") ? 4 : 3;
  *num_out = 1;
  return products_known(attrs, "bert_dense") ? MX_SUCCESS : MX_FAIL;
}

static MXReturnValue pd_type(const std::unordered_map<std::string, std::string>& attrs,
                             std::vector<int>* in_types, std::vector<int>* out_types) {
  return all_float32("bert_dense", in_types, out_types);
}

static MXReturnValue pd_shape(const std::unordered_map<std::string, std::string>& attrs,
                              std::vector<std::vector<unsigned int>>* in_shapes,
                              std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& x = (*in_shapes)[0];
  const auto& w = (*in_shapes)[1];
  std::vector<unsigned int> lead(x.begin(), x.end() - (x.empty() ? 0 : 1));
  if (x.size() < 2 || w.size() != 2 || w[1] != x.back() || (*in_shapes)[2].size() != 1
      || (*in_shapes)[2][0] != w[0] || (flag_of(attrs, "packed") && (*in_shapes)[3] != lead)) {
    MX_ERROR_MSG << "bert_dense: X (..., H), W (V, H), b (V,), weights of X's "
                    "leading shape";
    return MX_FAIL;
  }
  lead.push_back(w[0]);
  (*out_shapes)[0] = lead;
  return MX_SUCCESS;
}

// alloc_cpu hands out MXNet's temp space, the same buffer at every call of
// one op invocation: each invocation takes all it needs at once

static MXReturnValue pd_forward(const std::unordered_map<std::string, std::string>& attrs,
                                std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                                const OpResource& res) {
  MXTensor& X = (*inputs)[0];
  const int64_t H = X.shape.back(), R = X.size() / H, V = (*inputs)[1].shape[0];
  const bool packed = flag_of(attrs, "packed");
  const blas::Products by = products_of(attrs);
  const bool bf16 = blas::bf16_operands(by);
  const std::vector<int64_t> rows = packed ? weighted_rows((*inputs)[3].data<float>(), R)
                                           : std::vector<int64_t>();
  const int64_t n = packed ? rows.size() : R;
  if (n == 0) return MX_SUCCESS;
  const float* A = X.data<float>();
  const float* W = (*inputs)[1].data<float>();
  const float* b = (*inputs)[2].data<float>();
  float* Y = (*outputs)[0].data<float>();
  // oneDNN's layouts serve any number of rows: W reordered once per version
  // (prepared.h); MKL's packing is per row count, so its products take W as is
  const bool prepare = by == blas::Products::onednn || by == blas::Products::onednn_bf16;
  char* space = static_cast<char*>(res.alloc_cpu(
      (packed ? n * H * sizeof(float) : 0)
      + (bf16 ? (n + (prepare ? 0 : V)) * H * sizeof(blas::bf16) : 0)));
  if (packed) {  // the weighted rows, gathered
    float* gathered = reinterpret_cast<float*>(space);
    gather(A, rows, H, gathered);
    A = gathered;
    space += n * H * sizeof(float);
  }
  blas::bf16 *a16 = nullptr, *w16 = nullptr;
  if (bf16) {
    a16 = reinterpret_cast<blas::bf16*>(space);
    to_bf16_parallel(A, n * H, a16);
    if (!prepare) {
      w16 = a16 + n * H;
      to_bf16_parallel(W, V * H, w16);
    }
  }
  if (prepare) {  // the bias added by the product: Y written once
    prepared::Weight weight(V, H, by);
    weight.prepare({prepared::Source((*inputs)[1])}, {W});
    blas::Operand converted(by, n, a16);  // a16: A in bf16 already (or unused)
    weight.product(n, A, converted, true, Y, false, b);
    return MX_SUCCESS;
  }
  // Y = A W^T + b: each row starts as the bias (written in parallel: the
  // first touch of a large output), then one product on every thread adds to
  // it (measured faster than per-thread column blocks given their bias in cache)
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) std::memcpy(Y + i * V, b, V * sizeof(float));
  if (bf16) {
    blas::gemm_bf16(by, false, true, n, V, H, 1.f, a16, H, w16, H, 1.f, Y, V);
  } else {
    blas::sgemm(by, false, true, n, V, H, 1.f, A, H, W, H, 1.f, Y, V);
  }
  return MX_SUCCESS;
}

// inputs: dY, X, W, b, [weights,] Y.  outputs: dX, dW, db[, dweights]
static MXReturnValue pd_backward(const std::unordered_map<std::string, std::string>& attrs,
                                 std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                                 const OpResource& res) {
  MXTensor& X = (*inputs)[1];
  const int64_t H = X.shape.back(), R = X.size() / H, V = (*inputs)[2].shape[0];
  const float* dY = (*inputs)[0].data<float>();
  const float* W = (*inputs)[2].data<float>();
  float* dX = (*outputs)[0].data<float>();
  float* dW = (*outputs)[1].data<float>();
  float* db = (*outputs)[2].data<float>();
  const bool packed = flag_of(attrs, "packed");
  const blas::Products by = products_of(attrs);
  const bool bf16 = blas::bf16_operands(by);
  std::vector<int64_t> rows;
  if (packed) {
    std::memset((*outputs)[3].data_ptr, 0, R * sizeof(float));
    std::memset(dX, 0, R * H * sizeof(float));
    rows = weighted_rows((*inputs)[4].data<float>(), R);
  }
  const int64_t n = packed ? rows.size() : R;
  if (n == 0) {
    std::memset(dW, 0, V * H * sizeof(float));
    std::memset(db, 0, V * sizeof(float));
    return MX_SUCCESS;
  }
  column_sums(dY, n, V, db);  // of the packed rows
  const float* Xv = X.data<float>();
  float* dXv = dX;
  char* space = static_cast<char*>(res.alloc_cpu(
      (packed ? 2 * n * H * sizeof(float) : 0)
      + (bf16 ? (n * V + V * H + n * H) * sizeof(blas::bf16) : 0)));
  if (packed) {  // gather the weighted rows; scatter their gradient after
    float* scratch = reinterpret_cast<float*>(space);
    gather(X.data<float>(), rows, H, scratch);
    Xv = scratch;
    dXv = scratch + n * H;
    space += 2 * n * H * sizeof(float);
  }
  dense_backward(n, V, H, dY, Xv, W, dXv, dW, by, reinterpret_cast<blas::bf16*>(space));
  for (int64_t i = 0; packed && i < n; ++i)
    std::memcpy(dX + rows[i] * H, dXv + i * H, H * sizeof(float));
  return MX_SUCCESS;
}

REGISTER_OP(bert_dense)
.setParseAttrs(pd_parse)
.setInferType(pd_type)
.setInferShape(pd_shape)
.setForward(pd_forward, "cpu")
.setBackward(pd_backward, "cpu");
