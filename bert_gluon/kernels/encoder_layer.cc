// A whole post-LayerNorm encoder block (d2l.EncoderBlock, dropout off) as
// one forward-only op, for MXNet 1.9 on the CPU (extension library): what
// the twin's `for_inference()` runs (bert_encoder_stack, below, is every
// block of it in one op). A few whole sequences at a time (about
// 128 rows) go through every step while they sit in this core's cache, so
// no (B, T, H) intermediate goes through memory and no step is its own
// operator call:
//   Q, K, V = X W_q^T, X W_k^T, X W_v^T (+ biases), one product into (rows, 3H)
//   C = masked-softmax attention per head (heads.h, as bert_attention)
//   A = LayerNorm(X + C W_o^T (+ b_o))
//   Y = LayerNorm(A + act(A W1^T + b1) W2^T + b2), act ReLU or erf-GELU
//
// The four Dense products go through blas.h by the provider the `products`
// attribute names, in float32, on bf16 operands accumulated in float32, or in
// int8 (each operand row quantized on the fly, weights per row: blas.h's
// Operand), on weights packed or reordered (and quantized) once and kept
// while unchanged (prepared.h);
// attention's per-head products stay float32 (small_gemm.h, via heads.h).
//
// Op bert_encoder_layer(X (B, T, H), valid_lens (B,), W_q, W_k, W_v, W_o (H, H),
//                       [b_q, b_k, b_v, b_o (H,),] gamma1, beta1 (H,), W1 (F, H),
//                       b1 (F,), W2 (H, F), b2 (H,), gamma2, beta2 (H,);
//                       num_heads, scale, eps, activation, use_bias, products,
//                       [request_products])
//   -> Y (B, T, H)
// One task's rows (a request) run in one parallel region, its products by
// `request_products` (default: `products`): each thread multiplies its own
// columns on its own, where the libraries rank otherwise than on a batch.
// No backward (MXNet's graph building asks for one to be registered; it
// fails if run): graphs that may be differentiated use the per-step ops.
#include <immintrin.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>
#include <omp.h>
#include "mxnet/lib_api.h"
#include "common.h"
#include "heads.h"
#include "blas.h"
#include "prepared.h"

using namespace mxnet::ext;
using namespace heads;

namespace {
constexpr int64_t kBlockRows = 128;  // rows per task: ~0.5 MB of intermediates

// Input indices of the weights (X is input 0, valid_lens input 1)
struct Slots {
  int W_q = 2, W_k = 3, W_v = 4, W_o = 5, b_q = -1, b_k = -1, b_v = -1, b_o = -1;
  int gamma1, beta1, W1, b1, W2, b2, gamma2, beta2;
  explicit Slots(bool use_bias) {
    int next = 6;
    if (use_bias) {
      b_q = next++, b_k = next++, b_v = next++, b_o = next++;
    }
    gamma1 = next++, beta1 = next++, W1 = next++, b1 = next++, W2 = next++, b2 = next++;
    gamma2 = next++, beta2 = next++;
  }
  int count() const { return beta2 + 1; }
};

// erf(x) for float32 within 5e-7 of the true value: a rational function of
// x on [-4, 4] (Eigen's and TensorFlow's float erf), which vectorizes, unlike
// std::erf (the vector erff of glibc >= 2.35 is not everywhere).
inline float erf_rational(float x) {
  x = x < -4.f ? -4.f : x > 4.f ? 4.f : x;
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

// A row of W1's output, columns j0 .. j1 - 1: its bias added, then the
// activation (GELU, erf form, or ReLU), in place
inline void bias_activation(float* row, const float* bias, int64_t j0, int64_t j1, bool gelu) {
  if (gelu) {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) {
      const float v = row[j] + bias[j];
      row[j] = 0.5f * v * (1.f + erf_rational(v * 0.70710678f));
    }
  } else {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) row[j] = std::max(row[j] + bias[j], 0.f);
  }
}

// AddNorm on a row of H, in place: out = LayerNorm(out + residual (+ bias))
inline void add_norm_row(float* out, const float* residual, const float* bias,
                         const float* gamma, const float* beta, int64_t H, float eps) {
  if (bias) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) out[j] += residual[j] + bias[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) out[j] += residual[j];
  }
  layer_norm_row(out, gamma, beta, H, eps, out);
}

bool gelu_of(const Attrs& attrs) {
  auto it = attrs.find("activation");
  return it != attrs.end() && it->second == "gelu";
}

// The steps' seconds, summed over calls (thread-seconds where tasks run in
// parallel), where built with -DBERT_GLUON_LAYER_TIMERS
// (BERT_GLUON_LAYER_TIMERS=1, bench/profile_request.py); else the clock does
// nothing.
enum Step { kPrepare, kQKV, kAttention, kWo, kAddNorm1, kW1, kActivation, kW2, kAddNorm2,
            kSteps };
double step_seconds_[kSteps];

struct StepClock {
#ifdef BERT_GLUON_LAYER_TIMERS
  double last = omp_get_wtime();
  void lap(Step step) {
    const double now = omp_get_wtime();
#pragma omp atomic
    step_seconds_[step] += now - last;
    last = now;
  }
#else
  void lap(Step) {}
#endif
};

}  // namespace

// Copies the steps' seconds into out (kSteps of them); 0 where not built with
// timers, else the number of steps
extern "C" int bert_gluon_layer_step_seconds(double* out) {
#ifdef BERT_GLUON_LAYER_TIMERS
  std::memcpy(out, step_seconds_, sizeof(step_seconds_));
  return kSteps;
#else
  (void)out;
  return 0;
#endif
}

// Inputs of `layers` blocks (X, valid_lens, each block's weights) and the
// products attributes, for bert_encoder_layer (1) and bert_encoder_stack
static MXReturnValue encoder_parse(const Attrs& attrs, const char* op, int64_t layers,
                                   int* num_in, int* num_out) {
  *num_in = 2 + layers * (Slots(flag_of(attrs, "use_bias")).count() - 2);
  *num_out = 1;
  return products_known(attrs, op, "products", true)
             && products_known(attrs, op, "request_products", true)
             ? MX_SUCCESS : MX_FAIL;
}

static MXReturnValue layer_parse(const Attrs& attrs, int* num_in, int* num_out) {
  return encoder_parse(attrs, "bert_encoder_layer", 1, num_in, num_out);
}

static MXReturnValue layer_type(const Attrs& attrs, std::vector<int>* in_types,
                                std::vector<int>* out_types) {
  return all_float32("bert_encoder_layer", in_types, out_types, 1);
}

static MXReturnValue layer_shape(const Attrs& attrs,
                                 std::vector<std::vector<unsigned int>>* in_shapes,
                                 std::vector<std::vector<unsigned int>>* out_shapes) {
  const auto& in = *in_shapes;
  const Slots at(flag_of(attrs, "use_bias"));
  const auto& x = in[0];
  bool ok = x.size() == 3 && in[1] == std::vector<unsigned int>{x[0]} && in[at.W1].size() == 2;
  if (ok) {
    const unsigned int H = x[2], F = in[at.W1][0];
    using Shape = std::vector<unsigned int>;
    for (int w : {at.W_q, at.W_k, at.W_v, at.W_o}) ok = ok && in[w] == Shape{H, H};
    for (int b : {at.b_q, at.b_k, at.b_v, at.b_o, at.gamma1, at.beta1, at.b2, at.gamma2,
                  at.beta2})
      ok = ok && (b < 0 || in[b] == Shape{H});
    ok = ok && in[at.W1] == Shape{F, H} && in[at.b1] == Shape{F} && in[at.W2] == Shape{H, F};
  }
  if (!ok) {
    MX_ERROR_MSG << "bert_encoder_layer: X (B, T, H), valid_lens (B,), attention "
                    "weights (H, H), biases and LayerNorm parameters (H,), W1 (F, H), "
                    "b1 (F,), W2 (H, F)";
    return MX_FAIL;
  }
  if (!check_heads(attrs, x[2])) return MX_FAIL;
  (*out_shapes)[0] = x;
  return MX_SUCCESS;
}

namespace {

// The threads of one parallel region waiting for each other by spinning:
// OpenMP's own barrier (and every new region) puts them to sleep soon when
// MXNet keeps other OpenMP teams (throttled spinning), and waking them costs
// tens of microseconds, more than a step of a request's layer takes.
class SpinBarrier {
 public:
  void reset(int threads) { threads_ = threads; }
  void wait() {
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    while (generation_.load(std::memory_order_acquire) == generation) _mm_pause();
  }

 private:
  int threads_ = 1;
  std::atomic<int> arrived_{0}, generation_{0};
};

// One layer's weights as a request's products take them (prepared::Columns)
struct RequestLayer {
  std::vector<MXTensor>& in;
  const Slots& at;
  prepared::Columns Wqkv, Wo, W1, W2;
  std::vector<prepared::Source> qkv_sources, o_sources, w1_sources, w2_sources;
  std::vector<const float*> qkv_parts;
  std::vector<float> b_qkv;  // q | k | v biases stacked, or empty
  RequestLayer(std::vector<MXTensor>& in_, const Slots& at_, int64_t H, int64_t F,
               blas::Products by)
      : in(in_), at(at_), Wqkv(3 * H, H, by), Wo(H, H, by), W1(F, H, by), W2(H, F, by),
        qkv_sources(sources({at.W_q, at.W_k, at.W_v})), o_sources(sources({at.W_o})),
        w1_sources(sources({at.W1})), w2_sources(sources({at.W2})),
        qkv_parts{p(at.W_q), p(at.W_k), p(at.W_v)} {
    if (at.b_q >= 0) {
      b_qkv.resize(3 * H);
      for (int w = 0; w < 3; ++w)
        std::memcpy(b_qkv.data() + w * H, p(w == 0 ? at.b_q : w == 1 ? at.b_k : at.b_v),
                    H * sizeof(float));
    }
  }
  const float* p(int slot) const { return in[slot].data<float>(); }
  std::vector<prepared::Source> sources(std::initializer_list<int> slots) const {
    std::vector<prepared::Source> out;
    for (int slot : slots) out.emplace_back(in[slot]);
    return out;
  }
};

// One task (a request: every sequence's rows together) through `layers`, one
// after another, in one parallel region: each product's columns shared out
// over the threads (each thread multiplies its own block of W's rows, on
// that thread alone), attention by head, the AddNorms by row, the activation
// on each thread's own columns of W1's output; the steps separated by
// spinning barriers. X (B, T, H) in, Y out.
void one_task_in_one_region(const Attrs& attrs, std::vector<std::vector<MXTensor>*>& layers,
                            const Slots& at, const Dims& s, const float* X, float* Y,
                            const OpResource& res) {
  StepClock preparing;
  std::vector<MXTensor>& first = *layers[0];
  const int64_t B = s.B, T = s.T, H = s.H, F = first[at.W1].shape[0], H3 = 3 * H, n = B * T;
  const float scale = float_of(attrs, "scale", 1.f), eps = float_of(attrs, "eps", 1e-5f);
  const bool gelu = gelu_of(attrs);
  const blas::Products by = products_of(attrs, "request_products");
  const bool low = blas::bf16_operands(by) || blas::int8_operands(by);  // operands converted
  std::vector<RequestLayer> plan;
  plan.reserve(layers.size());
  for (auto* in : layers) plan.emplace_back(*in, at, H, F, by);
  const int threads = omp_get_max_threads();
  // float32: qkv (n, 3H), c, a (n, H), f (n, F), two (n, H) layer outputs;
  // per thread K^T (d, T) and P (T, T); then a converted operand (n, max(H, F))
  const int64_t shared = n * (H3 + 4 * H + F), each = s.d * T + T * T;
  const int64_t operand_floats = blas::Operand::bytes(by, n, std::max(H, F)) / 4 + 1;
  float* qkv = static_cast<float*>(
      res.alloc_cpu((shared + threads * each + operand_floats) * sizeof(float)));
  float *c = qkv + n * H3, *a = c + n * H, *f = a + n * H, *between = f + n * F;
  float* per_thread = between + 2 * n * H;
  blas::Operand operand(by, n, per_thread + threads * each);
  const MXTensor& lens = first[1];
  Dims qkv_dims = s;
  qkv_dims.ld = H3;  // q, k and v of a row side by side
  preparing.lap(kPrepare);
  SpinBarrier barrier;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
#pragma omp single
    barrier.reset(team);  // (OpenMP's barrier ends the single: all see it)
    StepClock clock;  // thread 0's view of the steps
    auto lap = [&](Step step) { if (t == 0) clock.lap(step); };
    auto rows = [&](auto&& row) {  // every row once, shared out by thread
      for (int64_t r = t; r < n; r += team) row(r);
    };
    int64_t j0, j1;
    float* Kt = per_thread + t * each;
    const float* x = X;
    for (size_t l = 0; l < plan.size(); ++l) {
      const RequestLayer& L = plan[l];
      float* y = l + 1 == plan.size() ? Y : between + (l % 2) * n * H;
      if (low) {
        rows([&](int64_t r) { operand.set_row(r, x + r * H, H); });
        barrier.wait();
      }
      L.Wqkv.share(t, team, &j0, &j1);
      L.Wqkv.product(L.qkv_sources, L.qkv_parts, n, x, operand, qkv, H3, j0, j1,
                     L.b_qkv.empty() ? nullptr : L.b_qkv.data());
      barrier.wait();
      lap(kQKV);
      for (int64_t job = t; job < B * s.N; job += team) {  // (sequence, head)
        const int64_t i = job / s.N, h = job % s.N;
        const float* q = qkv + i * T * H3 + h * s.d;
        const int64_t live = head_probs(q, q + H, kept_keys(lens, i, T), qkv_dims, scale,
                                        Kt, Kt + s.d * T);
        small_gemm::gemm(T, s.d, live, 1.f, Kt + s.d * T, T, 1, q + 2 * H, H3,
                         c + i * T * H + h * s.d, H);
      }
      barrier.wait();
      if (low) {
        rows([&](int64_t r) { operand.set_row(r, c + r * H, H); });
        barrier.wait();
      }
      lap(kAttention);
      L.Wo.share(t, team, &j0, &j1);
      L.Wo.product(L.o_sources, {L.p(at.W_o)}, n, c, operand, a, H, j0, j1,
                   at.b_o >= 0 ? L.p(at.b_o) : nullptr);
      barrier.wait();
      lap(kWo);
      rows([&](int64_t r) {  // AddNorm 1
        add_norm_row(a + r * H, x + r * H, nullptr, L.p(at.gamma1), L.p(at.beta1), H, eps);
        if (low) operand.set_row(r, a + r * H, H);
      });
      barrier.wait();
      lap(kAddNorm1);
      L.W1.share(t, team, &j0, &j1);
      L.W1.product(L.w1_sources, {L.p(at.W1)}, n, a, operand, f, F, j0, j1, nullptr);
      lap(kW1);
      const float* b1 = L.p(at.b1);
      for (int64_t r = 0; r < n; ++r)  // W1's bias and the activation, on these columns
        bias_activation(f + r * F, b1, j0, j1, gelu);
      barrier.wait();
      if (low) {  // W2's operand: f's rows whole
        rows([&](int64_t r) { operand.set_row(r, f + r * F, F); });
        barrier.wait();
      }
      lap(kActivation);
      L.W2.share(t, team, &j0, &j1);
      L.W2.product(L.w2_sources, {L.p(at.W2)}, n, f, operand, y, H, j0, j1, L.p(at.b2));
      barrier.wait();
      lap(kW2);
      rows([&](int64_t r) {  // AddNorm 2
        add_norm_row(y + r * H, a + r * H, nullptr, L.p(at.gamma2), L.p(at.beta2), H, eps);
      });
      barrier.wait();  // the next layer reads y whole
      lap(kAddNorm2);
      x = y;
    }
  }
}

}  // namespace

namespace {
// Whole sequences per task: about kBlockRows rows, fewer when that would
// leave a thread idle. When there are still fewer tasks than threads (a
// request of one sequence), tasks are "wide" and run one after another.
void split_tasks(int64_t B, int64_t T, int threads, int64_t* seqs, bool* wide) {
  *seqs = std::max<int64_t>(1, std::min<int64_t>(kBlockRows / T, (B + threads - 1) / threads));
  *wide = (B + *seqs - 1) / *seqs < threads;
  if (*wide) *seqs = std::max<int64_t>(1, std::min<int64_t>(B, kBlockRows / T));
}

int64_t tasks_of(int64_t B, int64_t T) {
  int64_t seqs;
  bool wide;
  split_tasks(B, T, omp_get_max_threads(), &seqs, &wide);
  return (B + seqs - 1) / seqs;
}
}  // namespace

static MXReturnValue layer_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                   std::vector<MXTensor>* outputs, const OpResource& res) {
  StepClock preparing;
  auto& in = *inputs;
  const Slots at(flag_of(attrs, "use_bias"));
  const int64_t B = in[0].shape[0], T = in[0].shape[1], H = in[0].shape[2];
  const int64_t F = in[at.W1].shape[0], H3 = 3 * H;
  Dims s = dims_of(in[0], heads_of(attrs));
  s.ld = H3;  // q, k and v of a row side by side
  const float scale = float_of(attrs, "scale", 1.f), eps = float_of(attrs, "eps", 1e-5f);
  const bool gelu = gelu_of(attrs);
  const float* X = in[0].data<float>();
  const MXTensor& lens = in[1];
  float* Y = (*outputs)[0].data<float>();
  auto p = [&](int slot) { return in[slot].data<float>(); };

  const int threads = omp_get_max_threads();
  // wide tasks: each product, each task's heads and rows shared out over every thread
  int64_t seqs;
  bool wide;
  split_tasks(B, T, threads, &seqs, &wide);
  const int64_t rows = seqs * T;
  const int64_t tasks = (B + seqs - 1) / seqs;
  if (tasks == 1) {  // a request: no team's wake-up between its steps
    std::vector<std::vector<MXTensor>*> one{&in};
    one_task_in_one_region(attrs, one, at, s, X, Y, res);
    return MX_SUCCESS;
  }
  const blas::Products by = products_of(attrs);
  const bool low = blas::bf16_operands(by) || blas::int8_operands(by);  // operands converted
  // The weights prepared once for every call while they are unchanged
  using prepared::Weight;
  Weight Wqkv(H3, H, by), Wo(H, H, by), W1(F, H, by), W2(H, F, by);
  auto sources = [&](std::initializer_list<int> slots) {
    std::vector<prepared::Source> out;
    for (int slot : slots) out.emplace_back(in[slot]);
    return out;
  };
  Wqkv.prepare(sources({at.W_q, at.W_k, at.W_v}), {p(at.W_q), p(at.W_k), p(at.W_v)});
  Wo.prepare(sources({at.W_o}), {p(at.W_o)});
  W1.prepare(sources({at.W1}), {p(at.W1)});
  W2.prepare(sources({at.W2}), {p(at.W2)});
  preparing.lap(kPrepare);
  // float32 scratch: the stacked q | k | v bias (3H) and a zero bias (H);
  // then per thread: float32 intermediates and a product's converted operand
  const int64_t each = rows * (H3 + 2 * H + F) + s.d * T + T * T
                       + blas::Operand::bytes(by, rows, std::max(H, F)) / 4 + 1;
  // one temp-space allocation per call: MXNet hands out the same buffer
  float* bqkv = static_cast<float*>(res.alloc_cpu((H3 + H + threads * each) * sizeof(float)));
  float* zeros = bqkv + H3;        // (H,): the W_o bias of a block without biases
  float* per_thread = zeros + H;
  if (at.b_q >= 0) {
    for (int w = 0; w < 3; ++w)
      std::memcpy(bqkv + w * H, p(w == 0 ? at.b_q : w == 1 ? at.b_k : at.b_v),
                  H * sizeof(float));
  }
  std::fill(zeros, zeros + H, 0.f);
  const float* b_qkv = at.b_q >= 0 ? bqkv : nullptr;
  const float* b_o = at.b_o >= 0 ? p(at.b_o) : zeros;
  const float *b1 = p(at.b1), *b2 = p(at.b2);
  // a thread's scratch: intermediates (n rows), then K^T and probabilities
  auto Kt_of = [&](int thread) { return per_thread + thread * each + rows * (H3 + 2 * H + F); };

  // Every step for the sequences of one task, on `slot`'s scratch; when
  // wide, called outside a parallel region and parallel inside.
  auto run_task = [&](int64_t task, int slot) {
    const int64_t b0 = task * seqs, n = std::min(seqs, B - b0) * T;  // n rows
    const float* x = X + b0 * T * H;
    float* y = Y + b0 * T * H;
    float* qkv = per_thread + slot * each;  // (n, 3H)
    float* c = qkv + rows * H3;    // (n, H): attention context
    float* a = c + rows * H;       // (n, H)
    float* f = a + rows * H;       // (n, F)
    // a left operand converted (n, max(H, F)), after K^T (d, T) and P (T, T)
    blas::Operand operand(by, rows, Kt_of(slot) + s.d * T + T * T);
    StepClock clock;

    Wqkv.product(n, x, operand, false, qkv, false, b_qkv);  // (n, 3H) = x W^T + b
    clock.lap(kQKV);
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (wide)
    for (int64_t i = 0; i < n / T; ++i) {
      for (int64_t h = 0; h < s.N; ++h) {
        float* Kt = Kt_of(wide ? omp_get_thread_num() : slot);
        float* P = Kt + s.d * T;
        const float* q = qkv + i * T * H3 + h * s.d;
        const int64_t live = head_probs(q, q + H, kept_keys(lens, b0 + i, T), s, scale, Kt, P);
        small_gemm::gemm(T, s.d, live, 1.f, P, T, 1, q + 2 * H, H3, c + i * T * H + h * s.d,
                         H);
      }
    }
    clock.lap(kAttention);
    Wo.product(n, c, operand, false, a);
    clock.lap(kWo);
#pragma omp parallel for if (wide)
    for (int64_t r = 0; r < n; ++r) {  // AddNorm 1, W_o's bias added here
      add_norm_row(a + r * H, x + r * H, b_o, p(at.gamma1), p(at.beta1), H, eps);
      if (low) operand.set_row(r, a + r * H, H);  // W1's operand, while in cache
    }
    clock.lap(kAddNorm1);
    W1.product(n, a, operand, low, f);
    clock.lap(kW1);
#pragma omp parallel for if (wide)
    for (int64_t r = 0; r < n; ++r) {  // W1's bias and the activation (and W2's operand)
      bias_activation(f + r * F, b1, 0, F, gelu);
      if (low) operand.set_row(r, f + r * F, F);
    }
    clock.lap(kActivation);
    W2.product(n, f, operand, low, y);
    clock.lap(kW2);
#pragma omp parallel for if (wide)
    for (int64_t r = 0; r < n; ++r)  // AddNorm 2, W2's bias added here
      add_norm_row(y + r * H, a + r * H, b2, p(at.gamma2), p(at.beta2), H, eps);
    clock.lap(kAddNorm2);
  };

  if (wide) {
    for (int64_t task = 0; task < tasks; ++task) run_task(task, 0);
  } else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t task = 0; task < tasks; ++task) run_task(task, omp_get_thread_num());
  }
  return MX_SUCCESS;
}

// The fused encoder ops serve inference graphs only (for_inference())
static MXReturnValue no_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                 std::vector<MXTensor>* outputs, const OpResource& res) {
  MX_ERROR_MSG << "bert_encoder_layer and bert_encoder_stack have no backward: they are "
                  "for graphs autograd does not record";
  return MX_FAIL;
}

REGISTER_OP(bert_encoder_layer)
.setParseAttrs(layer_parse)
.setInferType(layer_type)
.setInferShape(layer_shape)
.setForward(layer_forward, "cpu")
.setBackward(no_backward, "cpu");

// Op bert_encoder_stack(X (B, T, H), valid_lens (B,), then each layer's
//   weights as bert_encoder_layer takes them, layer after layer; num_layers
//   and bert_encoder_layer's attributes) -> Y (B, T, H): the whole encoder
//   stack as one op, for inference graphs. A request runs every layer in one
//   parallel region (one team wake-up per request, not per layer); a batch
//   runs bert_encoder_layer's tasks layer after layer.
namespace {
int64_t layers_of(const Attrs& attrs) {
  auto it = attrs.find("num_layers");
  return it == attrs.end() ? 0 : std::atoll(it->second.c_str());
}

// The inputs of stack layer `l` as bert_encoder_layer's: X, valid_lens, its weights
template <typename T>
std::vector<T> layer_inputs(const std::vector<T>& stack, int64_t l, int per) {
  std::vector<T> out{stack[0], stack[1]};
  out.insert(out.end(), stack.begin() + 2 + l * per, stack.begin() + 2 + (l + 1) * per);
  return out;
}
}  // namespace

static MXReturnValue stack_parse(const Attrs& attrs, int* num_in, int* num_out) {
  const int64_t layers = layers_of(attrs);
  if (layers < 1) {
    MX_ERROR_MSG << "bert_encoder_stack: num_layers must be >= 1";
    return MX_FAIL;
  }
  return encoder_parse(attrs, "bert_encoder_stack", layers, num_in, num_out);
}

static MXReturnValue stack_type(const Attrs& attrs, std::vector<int>* in_types,
                                std::vector<int>* out_types) {
  return all_float32("bert_encoder_stack", in_types, out_types, 1);
}

static MXReturnValue stack_shape(const Attrs& attrs,
                                 std::vector<std::vector<unsigned int>>* in_shapes,
                                 std::vector<std::vector<unsigned int>>* out_shapes) {
  const int per = Slots(flag_of(attrs, "use_bias")).count() - 2;
  for (int64_t l = 0; l < layers_of(attrs); ++l) {
    auto layer = layer_inputs(*in_shapes, l, per);
    if (layer_shape(attrs, &layer, out_shapes) != MX_SUCCESS) return MX_FAIL;
  }
  return MX_SUCCESS;
}

static MXReturnValue stack_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                   std::vector<MXTensor>* outputs, const OpResource& res) {
  auto& in = *inputs;
  const Slots at(flag_of(attrs, "use_bias"));
  const int per = at.count() - 2;
  const int64_t L = layers_of(attrs), B = in[0].shape[0], T = in[0].shape[1],
                H = in[0].shape[2];
  std::vector<std::vector<MXTensor>> layers;
  for (int64_t l = 0; l < L; ++l) layers.push_back(layer_inputs(in, l, per));
  float* Y = (*outputs)[0].data<float>();
  if (tasks_of(B, T) == 1) {
    std::vector<std::vector<MXTensor>*> all;
    for (auto& layer : layers) all.push_back(&layer);
    one_task_in_one_region(attrs, all, at, dims_of(in[0], heads_of(attrs)),
                           in[0].data<float>(), Y, res);
    return MX_SUCCESS;
  }
  std::vector<float> between(L > 1 ? 2 * B * T * H : 0);  // the layers' outputs
  for (int64_t l = 0; l < L; ++l) {
    if (l > 0) layers[l][0].data_ptr = between.data() + ((l - 1) % 2) * B * T * H;
    std::vector<MXTensor> out{(*outputs)[0]};
    if (l + 1 < L) out[0].data_ptr = between.data() + (l % 2) * B * T * H;
    if (layer_forward(attrs, &layers[l], &out, res) != MX_SUCCESS) return MX_FAIL;
  }
  return MX_SUCCESS;
}

REGISTER_OP(bert_encoder_stack)
.setParseAttrs(stack_parse)
.setInferType(stack_type)
.setInferShape(stack_shape)
.setForward(stack_forward, "cpu")
.setBackward(no_backward, "cpu");

