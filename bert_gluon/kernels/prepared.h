// Weights prepared once (stacked, converted to bf16, packed or reordered)
// and reused while their sources are unchanged, so a request converts no
// weight. Unchanged means: the same arrays (address), at the same version
// (MXNet's MXTensor::verID, bumped by every write: load_parameters, set_data,
// an optimizer's update) and with the same sampled values (an array freed
// and another made at its address starts again at version 0: its values
// tell them apart). Kept per (kind, first source), least recently used out
// beyond a budget; held by shared_ptr, so an entry replaced while an op
// still runs on it lives until that op ends. `Weight` is a Dense weight so
// prepared, and its products.
#pragma once
#include <omp.h>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>
#include "mxnet/lib_api.h"
#include "common.h"

namespace prepared {

// What a prepared weight was made from: an input array of the op
struct Source {
  const float* data;
  int64_t size;
  size_t version;
  uint64_t sample;  // a few of its values, hashed
  explicit Source(const mxnet::ext::MXTensor& t);
  bool operator==(const Source& o) const {
    return data == o.data && size == o.size && version == o.version && sample == o.sample;
  }
};

typedef std::shared_ptr<char> Buffer;  // 64-byte aligned

// The buffer of `bytes` that `make` fills from `sources`, for a `kind` (what
// is made: layout, provider, sizes), made now or reused
Buffer get(const std::vector<Source>& sources, uint64_t kind, size_t bytes,
           const std::function<void(char*)>& make);

// Buffers made and reused so far in this process (tests: a request makes none)
struct Counts {
  uint64_t made, reused;
};
Counts counts();

// Rows j0 .. j1 - 1 of the weight whose rows are `parts` one after another
// (q | k | v stacked, or one weight), each part N / parts.size() rows of K,
// copied into `out` ((j1 - j0) x K)
inline void stack_rows(const std::vector<const float*>& parts, int64_t N, int64_t K,
                       int64_t j0, int64_t j1, float* out) {
  const int64_t part = N / parts.size();
  for (int64_t j = j0; j < j1; ++j)
    std::memcpy(out + (j - j0) * K, parts[j / part] + (j % part) * K, K * sizeof(float));
}

// int8 weights (blas.h): each row's scale and the sum of its levels (what
// the operand's zero points add to each product) ahead of the packed levels
inline size_t int8_header(int64_t N) { return (2 * N * sizeof(float) + 63) / 64 * 64; }

// W (N, K) quantized row by row (7 bits, a scale per row) and packed by
// `by` into `out` (int8_header(N) + packed_weight_bytes)
inline void quantize_weight(blas::Products by, const float* W, int64_t N, int64_t K,
                            char* out) {
  float* scale = reinterpret_cast<float*>(out);
  float* sum = scale + N;
  std::vector<int8_t> levels(N * K);
#pragma omp parallel for if (!omp_in_parallel() && N * K > kSerialFloats)
  for (int64_t j = 0; j < N; ++j) {
    const float* w = W + j * K;
    float top = 0.f;
    for (int64_t k = 0; k < K; ++k) top = std::max(top, std::fabs(w[k]));
    scale[j] = top > 0.f ? top / blas::kWeightLevels : 1.f;
    const float inverse = 1.f / scale[j];
    int64_t total = 0;
    for (int64_t k = 0; k < K; ++k) {
      const float v = __builtin_nearbyintf(w[k] * inverse);
      const int q = static_cast<int>(std::max(-float(blas::kWeightLevels),
                                              std::min(float(blas::kWeightLevels), v)));
      levels[j * K + k] = static_cast<int8_t>(q);
      total += q;
    }
    sum[j] = static_cast<float>(total);
  }
  blas::pack_weight_s8(by, levels.data(), N, K, out + int8_header(N));
}

// C[:n, :width] (row stride ldc) = the product's values from its integer
// sums (n, width; dense, may be C itself): x's row scale times W's row
// scale times (the sum minus x's zero point times W's level sum), plus the
// bias
inline void dequantize(int64_t n, const blas::Operand& x, const float* w_scale,
                       const float* w_sum, int64_t width, const float* sums, float* C,
                       int64_t ldc, const float* bias) {
#pragma omp parallel for if (!omp_in_parallel() && n * width > kSerialFloats)
  for (int64_t r = 0; r < n; ++r) {
    const float xs = x.scales()[r], xz = x.zeros()[r];
    const float* s = sums + r * width;
    float* c = C + r * ldc;
    if (bias) {
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) c[j] = xs * w_scale[j] * (s[j] - xz * w_sum[j]) + bias[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) c[j] = xs * w_scale[j] * (s[j] - xz * w_sum[j]);
    }
  }
}

// Rows a packed weight is packed for: any product's rows (MKL's packed
// layout depends on N and K only; oneDNN's on neither M)
constexpr int64_t kPackRows = 1024;

// A Dense weight W (N, K), the rows of `parts` one after another (q | k | v
// stacked, or one weight), prepared for products X (n, K) @ W^T: packed
// (MKL) or reordered (oneDNN), in float32, bf16 or int8 (quantized first),
// once per version of its sources and kept (get, above). (A request's
// products: Columns, below.)
struct Weight {
  int64_t N, K;
  blas::Products by;
  bool bf16, int8;
  Buffer held;
  const void* data = nullptr;
  Weight(int64_t N_, int64_t K_, blas::Products by_)
      : N(N_), K(K_), by(by_), bf16(blas::bf16_operands(by_)), int8(blas::int8_operands(by_)) {}

  void prepare(const std::vector<Source>& sources,
               const std::vector<const float*>& parts) {
    const uint64_t layout = 1 + static_cast<uint64_t>(by);
    const uint64_t kind = (layout << 56) ^ (uint64_t(N) << 28) ^ uint64_t(K);
    const size_t bytes = blas::packed_weight_bytes(by, kPackRows, N, K)
                         + (int8 ? int8_header(N) : 0);
    held = get(sources, kind, bytes, [&](char* out) {
      std::vector<float> stacked(parts.size() > 1 ? N * K : 0);
      const float* W = parts[0];
      if (parts.size() > 1) {
        stack_rows(parts, N, K, 0, N, stacked.data());
        W = stacked.data();
      }
      if (int8) return quantize_weight(by, W, N, K, out);
      if (!bf16) return blas::pack_weight(by, W, N, K, kPackRows, out);
      std::vector<blas::bf16> w16(N * K);
      to_bf16_parallel(W, N * K, w16.data());
      blas::pack_weight_bf16(by, w16.data(), N, K, kPackRows, out);
    });
    data = held.get();
  }

  // C (n, N) = X (n, K) @ W^T (+ bias (N,) on every row) (+ C when
  // accumulate, float32 and bf16 only). bf16 and int8 products multiply
  // `operand`: X converted already (`converted`), or converted into it now.
  void product(int64_t n, const float* X, blas::Operand& operand, bool converted, float* C,
               bool accumulate = false, const float* bias = nullptr) const {
    const float beta = accumulate ? 1.f : 0.f;
    if (!bf16 && !int8) {
      blas::gemm_packed(by, n, N, K, X, K, data, beta, C, N, bias);
      return;
    }
    if (!converted) operand.set_rows(n, X, K);
    if (bf16) return blas::gemm_packed_bf16(by, n, N, K, operand.bf16_rows(), K, data, beta,
                                            C, N, bias);
    const float* scale = static_cast<const float*>(data);
    blas::gemm_packed_u8s8(by, n, N, K, operand.u8_rows(), K,
                           static_cast<const char*>(data) + int8_header(N), C, N);
    dequantize(n, operand, scale, scale + N, N, C, C, N, bias);
  }
};

// A Dense weight W (N, K) (the rows of `parts` stacked) for products a
// block of W's rows (C's columns) at a time: each thread of a parallel region
// multiplies its own share, on that thread alone, by that share packed or
// reordered (in bf16 or int8 where the products are) once per version of
// the sources, as `Weight` does for whole weights.
struct Columns {
  int64_t N, K;
  blas::Products by;
  bool bf16, int8;
  Columns(int64_t N_, int64_t K_, blas::Products by_)
      : N(N_), K(K_), by(by_), bf16(blas::bf16_operands(by_)), int8(blas::int8_operands(by_)) {}

  // Thread `t` of `threads`' share of C's columns: [first, last), in steps
  // of 16 (whole vectors)
  void share(int t, int threads, int64_t* first, int64_t* last) const {
    const int64_t width = (N + 16 * threads - 1) / (16 * threads) * 16;
    *first = std::min(N, t * width);
    *last = std::min(N, *first + width);
  }

  // C[:, j0:j1] (row stride ldc) = X (n, K) @ W[j0:j1]^T (+ bias[j0:j1]),
  // on the calling thread; `operand` is X converted where the products are
  // bf16 or int8
  void product(const std::vector<Source>& sources, const std::vector<const float*>& parts,
               int64_t n, const float* X, const blas::Operand& operand, float* C, int64_t ldc,
               int64_t j0, int64_t j1, const float* bias) const {
    if (j0 >= j1) return;
    if (by == blas::Products::onednn || by == blas::Products::onednn_bf16)
      return plain(sources, parts, n, X, operand.bf16_rows(), C, ldc, j0, j1, bias);
    const int64_t width = j1 - j0;
    const uint64_t layout = 1 + static_cast<uint64_t>(by);
    const uint64_t kind = (layout << 56) ^ (uint64_t(j0) << 42) ^ (uint64_t(width) << 28)
                          ^ uint64_t(K) ^ (1ull << 55);  // a share, not a whole weight
    const size_t header = int8 ? int8_header(width) : 0;
    Buffer held = get(sources, kind, header + blas::packed_weight_bytes(by, kPackRows, width, K),
                      [&](char* out) {
      std::vector<float> rows(width * K);  // W's rows j0 .. j1 - 1
      stack_rows(parts, N, K, j0, j1, rows.data());
      if (int8) return quantize_weight(by, rows.data(), width, K, out);
      if (!bf16) return blas::pack_weight(by, rows.data(), width, K, kPackRows, out);
      std::vector<blas::bf16> w16(width * K);
      blas::to_bf16(rows.data(), width * K, w16.data());
      blas::pack_weight_bf16(by, w16.data(), width, K, kPackRows, out);
    });
    const float* b = bias ? bias + j0 : nullptr;
    if (int8) {  // a share of its own: quantized and packed as a whole weight
      // the sums dense: oneDNN's int8 matmul writing rows of stride ldc is
      // its reference implementation, some hundred times slower (measured)
      thread_local std::vector<float> sums;
      sums.resize(n * width);
      const float* scale = reinterpret_cast<const float*>(held.get());
      blas::gemm_packed_u8s8(by, n, width, K, operand.u8_rows(), K, held.get() + header,
                             sums.data(), width);
      dequantize(n, operand, scale, scale + width, width, sums.data(), C + j0, ldc, b);
    } else if (bf16) {
      blas::gemm_packed_bf16(by, n, width, K, operand.bf16_rows(), K, held.get(), 0.f, C + j0,
                             ldc, b);
    } else {
      blas::gemm_packed(by, n, width, K, X, K, held.get(), 0.f, C + j0, ldc, b);
    }
  }

 private:
  // oneDNN's: W plain (stacked; bf16 where the products are), its rows
  // j0 .. j1 multiplied in place (a share of a reordered weight, multiplied
  // at these few rows, fell to oneDNN's reference matmul)
  void plain(const std::vector<Source>& sources, const std::vector<const float*>& parts,
             int64_t n, const float* X, const blas::bf16* X16, float* C, int64_t ldc,
             int64_t j0, int64_t j1, const float* bias) const {
    const float* W = parts[0];
    Buffer held;
    if (bf16 || parts.size() > 1) {
      const uint64_t kind = ((0x40ull + bf16) << 56) ^ (uint64_t(N) << 28) ^ uint64_t(K);
      held = get(sources, kind, N * K * (bf16 ? sizeof(blas::bf16) : sizeof(float)),
                 [&](char* out) {
                   std::vector<float> stacked(bf16 ? N * K : 0);
                   float* S = bf16 ? stacked.data() : reinterpret_cast<float*>(out);
                   stack_rows(parts, N, K, 0, N, S);
                   if (bf16) blas::to_bf16(S, N * K, reinterpret_cast<blas::bf16*>(out));
                 });
      W = reinterpret_cast<const float*>(held.get());
    }
    const float beta = bias ? 1.f : 0.f;
    for (int64_t r = 0; bias && r < n; ++r)  // the bias as the product's start
      std::memcpy(C + r * ldc + j0, bias + j0, (j1 - j0) * sizeof(float));
    if (bf16)
      blas::gemm_bf16(by, false, true, n, j1 - j0, K, 1.f, X16, K,
                      reinterpret_cast<const blas::bf16*>(W) + j0 * K, K, beta, C + j0, ldc);
    else
      blas::sgemm(by, false, true, n, j1 - j0, K, 1.f, X, K, W + j0 * K, K, beta, C + j0,
                  ldc);
  }
};

}  // namespace prepared
