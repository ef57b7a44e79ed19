// BERT's input embedding, token + segment + position, as one op for MXNet
// 1.9 on the CPU (extension library): one pass over the (B, T, H) output
// instead of two lookups, two broadcast adds and their backward reductions.
//
// Op bert_embed(tokens (B, T), segments (B, T), token_weight (V, H),
//               segment_weight (S, H), positions ([1,] L, H)) -> X (B, T, H)
//   X[b, t] = token_weight[tokens[b, t]] + segment_weight[segments[b, t]]
//             + positions[t]; ids are clipped into range, as nn.Embedding.
//   positions may be a whole learned table (L >= T rows, as BERT's
//   (1, max_len, H) parameter): its first T rows are read, no slicing op.
//   Ids (int32, int64 or float32) get no gradient.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>
#include <omp.h>
#include "mxnet/lib_api.h"
#include "common.h"

using namespace mxnet::ext;
using Attrs = std::unordered_map<std::string, std::string>;

namespace {
// Id i of an id tensor, clipped into [0, n)
int64_t id_at(const MXTensor& ids, int64_t i, int64_t n) {
  int64_t id;
  if (ids.dtype == kInt32) id = reinterpret_cast<const int32_t*>(ids.data_ptr)[i];
  else if (ids.dtype == kInt64) id = reinterpret_cast<const int64_t*>(ids.data_ptr)[i];
  else id = static_cast<int64_t>(reinterpret_cast<const float*>(ids.data_ptr)[i]);
  return id < 0 ? 0 : id >= n ? n - 1 : id;
}
}  // namespace

static MXReturnValue embed_parse(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 5;
  *num_out = 1;
  return MX_SUCCESS;
}

static MXReturnValue embed_type(const Attrs& attrs, std::vector<int>* in_types,
                                std::vector<int>* out_types) {
  for (int i = 0; i < 5; ++i) {
    const int t = (*in_types)[i];
    const bool ok = t == kFloat32 || (i < 2 && (t == kInt32 || t == kInt64));
    if (!ok) {
      MX_ERROR_MSG << "bert_embed: ids int32, int64 or float32, the rest float32";
      return MX_FAIL;
    }
  }
  (*out_types)[0] = kFloat32;
  return MX_SUCCESS;
}

static MXReturnValue embed_shape(const Attrs& attrs,
                                 std::vector<std::vector<unsigned int>>* in_shapes,
                                 std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& in = *in_shapes;
  const auto& ids = in[0];
  const auto& pos = in[4];
  const bool positions_ok = (pos.size() == 2 || (pos.size() == 3 && pos[0] == 1))
                            && ids.size() == 2 && in[2].size() == 2
                            && pos[pos.size() - 2] >= ids[1] && pos.back() == in[2][1];
  const bool ok = ids.size() == 2 && in[1] == ids && in[2].size() == 2 && in[3].size() == 2
                  && in[3][1] == in[2][1] && positions_ok;
  if (!ok) {
    MX_ERROR_MSG << "bert_embed: tokens and segments (B, T), token_weight (V, H), "
                    "segment_weight (S, H), positions ([1,] L >= T, H)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = {ids[0], ids[1], in[2][1]};
  return MX_SUCCESS;
}

static MXReturnValue embed_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                   std::vector<MXTensor>* outputs, const OpResource& res) {
  auto& in = *inputs;
  const int64_t T = in[0].shape[1], rows = in[0].size(), H = in[2].shape[1];
  const int64_t V = in[2].shape[0], S = in[3].shape[0];
  const float* tok = in[2].data<float>();
  const float* seg = in[3].data<float>();
  const float* pos = in[4].data<float>();
  float* X = (*outputs)[0].data<float>();
#pragma omp parallel for schedule(static) if (rows * H > kSerialFloats)
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = tok + id_at(in[0], r, V) * H;
    const float* b = seg + id_at(in[1], r, S) * H;
    const float* c = pos + (r % T) * H;
    float* x = X + r * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) x[j] = a[j] + b[j] + c[j];
  }
  return MX_SUCCESS;
}

// inputs: dX, tokens, segments, token_weight, segment_weight, positions, X
// outputs: dtokens, dsegments, dtoken_weight, dsegment_weight, dpositions
static MXReturnValue embed_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                    std::vector<MXTensor>* outputs, const OpResource& res) {
  auto& in = *inputs;
  auto& out = *outputs;
  const MXTensor& tokens = in[1];
  const MXTensor& segments = in[2];
  const int64_t T = tokens.shape[1], rows = tokens.size(), H = in[3].shape[1];
  const int64_t V = in[3].shape[0], S = in[4].shape[0];
  const float* dX = in[0].data<float>();
  for (int i = 0; i < 2; ++i)  // ids: no gradient
    std::memset(out[i].data_ptr, 0, out[i].size() * (out[i].dtype == kInt64 ? 8 : 4));
  float* dtok = out[2].data<float>();
  float* dseg = out[3].data<float>();
  float* dpos = out[4].data<float>();
  std::memset(dseg, 0, S * H * sizeof(float));
  std::memset(dpos, 0, out[4].size() * sizeof(float));  // rows past T: no gradient
#pragma omp parallel for schedule(static)
  for (int64_t v = 0; v < V; ++v) std::memset(dtok + v * H, 0, H * sizeof(float));
  // Each thread owns a block of columns, so rows with the same id never race
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t j0 = H * t / threads, j1 = H * (t + 1) / threads;
    for (int64_t r = 0; r < rows; ++r) {
      const float* d = dX + r * H;
      float* a = dtok + id_at(tokens, r, V) * H;
      float* b = dseg + id_at(segments, r, S) * H;
      float* c = dpos + (r % T) * H;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        a[j] += d[j];
        b[j] += d[j];
        c[j] += d[j];
      }
    }
  }
  return MX_SUCCESS;
}

REGISTER_OP(bert_embed)
.setParseAttrs(embed_parse)
.setInferType(embed_type)
.setInferShape(embed_shape)
.setForward(embed_forward, "cpu")
.setBackward(embed_backward, "cpu");
