// Products from oneDNN (libdnnl of the onednn-cpu-gomp package, on the same
// libgomp as MXNet), the Products::onednn, ::onednn_bf16 and ::onednn_int8
// providers of blas.h: float32, bf16 or u8 x s8 operands, float32 results.
// int8: brgemm on AMX-INT8, AVX512-VNNI or AVX-VNNI, gemm:jit (vpmaddubsw)
// on plain AVX2, where u8 sources run about twice its float32 and s8 ones
// (a +128 shift and compensation inside) no faster (measured). Its matmul dispatches on
// the ISA, not the vendor: AMX, AVX512_BF16, AVX-512 or AVX2, where MKL
// takes a slower path on AMD (on Zen 4 its sgemm at 0.8-0.9x oneDNN's, its
// bf16 slower than its sgemm; oneDNN's bf16 1.4-1.7x its float32). Built
// only where its headers were found (-DBERT_GLUON_ONEDNN,
// kernels/__init__.py); else nothing here runs and the Python side never
// names it.
//
// Primitives are made once per shape and kept, the kMaxMatmuls most recently
// used (oneDNN's own cache would still rebuild the descriptor on each call);
// an evicted one is freed when the last product running it returns. Their scratchpads are the
// calling thread's own (scratchpad mode 'user'): the fused block runs one
// primitive on several threads at once, which the library's shared
// scratchpad does not allow (it crashed at BERT-base sizes). A packed weight is W in
// the layout oneDNN's matmul picks for it, reordered once; that layout does
// not depend on the number of rows M (measured), so one packing serves any M.
#include <cstdio>
#include <cstring>
#include <array>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <vector>
#include "blas.h"
#include "onednn.h"

#ifdef BERT_GLUON_ONEDNN
#include <oneapi/dnnl/dnnl.h>

namespace {

dnnl_engine_t engine() {
  static dnnl_engine_t made = [] {
    dnnl_engine_t e = nullptr;
    if (dnnl_engine_create(&e, dnnl_cpu, 0) != dnnl_success) e = nullptr;
    return e;
  }();
  return made;
}

// A stream is not for two threads at once: one per calling thread
struct Stream {
  dnnl_stream_t stream = nullptr;
  Stream() { dnnl_stream_create(&stream, engine(), dnnl_stream_default_flags); }
  ~Stream() { if (stream) dnnl_stream_destroy(stream); }
};

dnnl_stream_t stream() {
  thread_local Stream mine;
  return mine.stream;
}

// (rows, cols) with strides; transposed: stored as (cols, rows)
dnnl_memory_desc_t matrix(int64_t rows, int64_t cols, int64_t ld, bool transposed,
                          dnnl_data_type_t type) {
  dnnl_dims_t dims = {rows, cols};
  dnnl_dims_t strides = {transposed ? 1 : ld, transposed ? ld : 1};
  dnnl_memory_desc_t md = nullptr;
  dnnl_memory_desc_create_with_strides(&md, 2, dims, type, strides);
  return md;
}

// W^T (K, N) of a W (N, K) in the layout matmul picks ('any'), or nullptr
dnnl_memory_desc_t any_weights(int64_t K, int64_t N, dnnl_data_type_t type) {
  dnnl_dims_t dims = {K, N};
  dnnl_memory_desc_t md = nullptr;
  dnnl_memory_desc_create_with_tag(&md, 2, dims, type, dnnl_format_tag_any);
  return md;
}

using onednn::Operands;
dnnl_data_type_t src_type(Operands t) {
  return t == Operands::bf16 ? dnnl_bf16 : t == Operands::u8s8 ? dnnl_u8 : dnnl_f32;
}
dnnl_data_type_t weights_type(Operands t) {
  return t == Operands::bf16 ? dnnl_bf16 : t == Operands::u8s8 ? dnnl_s8 : dnnl_f32;
}
size_t weight_size(Operands t) { return t == Operands::bf16 ? 2 : t == Operands::u8s8 ? 1 : 4; }
dnnl_data_type_t type_of(bool bf16) { return bf16 ? dnnl_bf16 : dnnl_f32; }

// A matmul primitive C (M, N) = alpha A B (+ beta C), or nullptr; `weights`
// given: B in that layout. Its implementation's name into `impl` if asked.
dnnl_primitive_t make_matmul(dnnl_memory_desc_t a, const_dnnl_memory_desc_t b,
                             dnnl_memory_desc_t c, float alpha, float beta,
                             dnnl_memory_desc_t* picked_weights, const char** impl,
                             const_dnnl_memory_desc_t bias = nullptr,
                             dnnl_memory_desc_t* scratchpad = nullptr) {
  dnnl_primitive_attr_t attr = nullptr;
  dnnl_post_ops_t post = nullptr;
  dnnl_primitive_attr_create(&attr);
  dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
  dnnl_post_ops_create(&post);
  if (alpha != 1.f) dnnl_post_ops_append_eltwise(post, dnnl_eltwise_linear, alpha, 0.f);
  if (beta != 0.f) dnnl_post_ops_append_sum(post, beta, 0, dnnl_data_type_undef);
  dnnl_primitive_attr_set_post_ops(attr, post);
  dnnl_primitive_desc_t pd = nullptr;
  dnnl_primitive_t prim = nullptr;
  if (dnnl_matmul_primitive_desc_create(&pd, engine(), a, b, bias, c, attr)
      == dnnl_success) {
    const char* name = "";
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name);
    if (impl) *impl = name;  // static strings of the library
    if (picked_weights)
      dnnl_memory_desc_clone(picked_weights, dnnl_primitive_desc_query_md(
                                                 pd, dnnl_query_weights_md, 0));
    if (scratchpad)
      dnnl_memory_desc_clone(scratchpad, dnnl_primitive_desc_query_md(
                                             pd, dnnl_query_scratchpad_md, 0));
    if (dnnl_primitive_create(&prim, pd) != dnnl_success) prim = nullptr;
    dnnl_primitive_desc_destroy(pd);
  }
  dnnl_post_ops_destroy(post);
  dnnl_primitive_attr_destroy(attr);
  return prim;
}

struct Matmul {
  dnnl_primitive_t prim = nullptr;
  dnnl_memory_desc_t a = nullptr, b = nullptr, c = nullptr, bias = nullptr, scratchpad = nullptr;
  Matmul() = default;
  Matmul(const Matmul&) = delete;
  Matmul& operator=(const Matmul&) = delete;
  ~Matmul() {
    if (prim) dnnl_primitive_destroy(prim);
    for (auto md : {a, b, c, bias, scratchpad}) if (md) dnnl_memory_desc_destroy(md);
  }
};

// A server sees every request length: some thousand shapes of products, each
// primitive a few kB to a few hundred kB (its JIT code)
constexpr size_t kMaxMatmuls = 512;
typedef std::array<int64_t, 11> MatmulKey;
std::mutex lock_;
std::list<std::pair<MatmulKey, std::shared_ptr<const Matmul>>> recent_;  // newest first
std::map<MatmulKey, decltype(recent_)::iterator> matmuls_;
// packed layout of W (N, K), by (operands, N, K); nullptr: no oneDNN product for it
std::map<std::array<int64_t, 3>, dnnl_memory_desc_t> packed_;

dnnl_memory_desc_t packed_layout(Operands types, int64_t N, int64_t K) {
  std::lock_guard<std::mutex> hold(lock_);
  const std::array<int64_t, 3> key = {static_cast<int64_t>(types), N, K};
  auto found = packed_.find(key);
  if (found != packed_.end()) return found->second;
  dnnl_memory_desc_t a = matrix(1, K, K, false, src_type(types));
  dnnl_memory_desc_t c = matrix(1, N, N, false, dnnl_f32);
  dnnl_memory_desc_t any = any_weights(K, N, weights_type(types)), picked = nullptr;
  dnnl_primitive_t probe = make_matmul(a, any, c, 1.f, 0.f, &picked, nullptr);
  if (probe) dnnl_primitive_destroy(probe);
  for (auto md : {a, c, any}) dnnl_memory_desc_destroy(md);
  return packed_[key] = probe ? picked : nullptr;
}

// This thread's scratchpad of at least `bytes`
void* scratch(size_t bytes) {
  thread_local std::vector<char> mine;
  if (mine.size() < bytes) mine.resize(bytes);
  return mine.data();
}

bool run(const Matmul& m, const void* A, const void* B, float* C,
         const float* bias = nullptr) {
  dnnl_memory_t a = nullptr, b = nullptr, c = nullptr, d = nullptr, s = nullptr;
  dnnl_memory_create(&a, m.a, engine(), const_cast<void*>(A));
  dnnl_memory_create(&b, m.b, engine(), const_cast<void*>(B));
  dnnl_memory_create(&c, m.c, engine(), C);
  dnnl_memory_create(&s, m.scratchpad, engine(),
                     scratch(dnnl_memory_desc_get_size(m.scratchpad)));
  int n = 0;
  dnnl_exec_arg_t args[5];
  for (auto arg : {dnnl_exec_arg_t{DNNL_ARG_SRC, a}, dnnl_exec_arg_t{DNNL_ARG_WEIGHTS, b},
                   dnnl_exec_arg_t{DNNL_ARG_DST, c}, dnnl_exec_arg_t{DNNL_ARG_SCRATCHPAD, s}})
    args[n++] = arg;
  if (bias) {
    dnnl_memory_create(&d, m.bias, engine(), const_cast<float*>(bias));
    args[n++] = {DNNL_ARG_BIAS, d};
  }
  const bool ok = a && b && c && s && (d || !bias)
                  && dnnl_primitive_execute(m.prim, stream(), n, args) == dnnl_success
                  && dnnl_stream_wait(stream()) == dnnl_success;
  for (auto mem : {a, b, c, d, s}) if (mem) dnnl_memory_destroy(mem);
  return ok;
}

// The primitive of a key (taking the descriptors), made on first use; a null
// prim when it cannot be. Shared: evicting it while another thread runs it
// frees it when that thread is done.
std::shared_ptr<const Matmul> matmul_for(const MatmulKey& key, dnnl_memory_desc_t a,
                                         dnnl_memory_desc_t b, dnnl_memory_desc_t c,
                                         float alpha, float beta,
                                         dnnl_memory_desc_t bias = nullptr) {
  std::lock_guard<std::mutex> hold(lock_);
  auto found = matmuls_.find(key);
  if (found != matmuls_.end()) {
    for (auto md : {a, b, c, bias}) if (md) dnnl_memory_desc_destroy(md);
    recent_.splice(recent_.begin(), recent_, found->second);
    return found->second->second;
  }
  auto m = std::make_shared<Matmul>();
  m->prim = make_matmul(a, b, c, alpha, beta, nullptr, nullptr, bias, &m->scratchpad);
  m->a = a, m->b = b, m->c = c, m->bias = bias;
  recent_.emplace_front(key, m);
  matmuls_[key] = recent_.begin();
  while (recent_.size() > kMaxMatmuls) {
    matmuls_.erase(recent_.back().first);
    recent_.pop_back();
  }
  return m;
}

int32_t bits(float x) {
  int32_t i;
  std::memcpy(&i, &x, 4);
  return i;
}

float widened(float v) { return v; }
float widened(blas::bf16 v) {
  const uint32_t u = uint32_t(v) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// Reference product, for a shape oneDNN refused (never seen on a CPU that
// passed the Python side's probe): correct, slow
template <typename T>
void reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const T* A, int64_t lda, const T* B, int64_t ldb, float beta, float* C,
               int64_t ldc) {
  auto f = [](T v) { return widened(v); };
  std::fprintf(stderr, "bert_gluon: oneDNN has no %s product for %lldx%lldx%lld here; "
               "running a slow reference\n", sizeof(T) == 2 ? "bf16" : "float32",
               (long long)M, (long long)K, (long long)N);
#pragma omp parallel for
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      float sum = 0.f;
      for (int64_t k = 0; k < K; ++k)
        sum += f(trans_a ? A[k * lda + i] : A[i * lda + k])
               * f(trans_b ? B[j * ldb + k] : B[k * ldb + j]);
      C[i * ldc + j] = alpha * sum + (beta != 0.f ? beta * C[i * ldc + j] : 0.f);
    }
}

}  // namespace

namespace onednn {

size_t cached_primitives() {
  std::lock_guard<std::mutex> hold(lock_);
  return recent_.size();
}

const char* implementation(Operands types, int64_t M, int64_t N, int64_t K) {
  if (!engine()) return "";
  dnnl_memory_desc_t a = matrix(M, K, K, false, src_type(types));
  dnnl_memory_desc_t c = matrix(M, N, N, false, dnnl_f32);
  dnnl_memory_desc_t any = any_weights(K, N, weights_type(types));
  const char* impl = "";
  dnnl_primitive_t probe = make_matmul(a, any, c, 1.f, 0.f, nullptr, &impl);
  if (probe) dnnl_primitive_destroy(probe);
  for (auto md : {a, c, any}) dnnl_memory_desc_destroy(md);
  return probe ? impl : "";
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const T* A, int64_t lda, const T* B, int64_t ldb, float beta, float* C,
          int64_t ldc) {
  const bool bf16 = sizeof(T) == 2;
  const std::array<int64_t, 11> key = {bf16, trans_a, trans_b, M, N, K, lda, ldb, ldc,
                                       bits(alpha), bits(beta)};
  const auto m = matmul_for(key, matrix(M, K, lda, trans_a, type_of(bf16)),
                            matrix(K, N, ldb, trans_b, type_of(bf16)),
                            matrix(M, N, ldc, false, dnnl_f32), alpha, beta);
  if (!m->prim || !run(*m, A, B, C))
    reference(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc) {
  gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const blas::bf16* A, int64_t lda, const blas::bf16* B, int64_t ldb, float beta,
               float* C, int64_t ldc) {
  gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

size_t packed_weight_bytes(Operands types, int64_t N, int64_t K) {
  dnnl_memory_desc_t layout = packed_layout(types, N, K);
  return layout ? dnnl_memory_desc_get_size(layout) : N * K * weight_size(types);
}

void pack_weight(Operands types, const void* W, int64_t N, int64_t K, void* packed) {
  dnnl_memory_desc_t layout = packed_layout(types, N, K);
  dnnl_memory_desc_t plain = matrix(K, N, K, true, weights_type(types));  // W^T, stored as W
  bool done = false;
  if (layout) {
    dnnl_primitive_desc_t pd = nullptr;
    dnnl_primitive_t reorder = nullptr;
    dnnl_memory_t from = nullptr, to = nullptr;
    if (dnnl_reorder_primitive_desc_create(&pd, plain, engine(), layout, engine(), nullptr)
            == dnnl_success
        && dnnl_primitive_create(&reorder, pd) == dnnl_success
        && dnnl_memory_create(&from, plain, engine(), const_cast<void*>(W)) == dnnl_success
        && dnnl_memory_create(&to, layout, engine(), packed) == dnnl_success) {
      dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
      done = dnnl_primitive_execute(reorder, stream(), 2, args) == dnnl_success
             && dnnl_stream_wait(stream()) == dnnl_success;
    }
    if (from) dnnl_memory_destroy(from);
    if (to) dnnl_memory_destroy(to);
    if (reorder) dnnl_primitive_destroy(reorder);
    if (pd) dnnl_primitive_desc_destroy(pd);
  }
  dnnl_memory_desc_destroy(plain);
  if (!done) std::memcpy(packed, W, N * K * weight_size(types));
}

void gemm_packed(Operands types, int64_t M, int64_t N, int64_t K, const void* X, int64_t ldx,
                 const void* packed, float beta, float* C, int64_t ldc, const float* bias) {
  dnnl_memory_desc_t layout = packed_layout(types, N, K);
  if (bias && (!layout || beta != 0.f)) {  // the bias not fused: C starts with it
    beta = blas::start_with_bias(M, N, beta, C, ldc, bias);
    bias = nullptr;
  }
  const bool bf16 = types == Operands::bf16;
  if (!layout && types == Operands::u8s8) {
    std::fprintf(stderr, "bert_gluon: oneDNN has no int8 product for %lldx%lld here\n",
                 (long long)N, (long long)K);
    std::abort();  // the Python side's probe (kernels.int8_unavailable_reason) said it had
  }
  if (!layout) {  // packed as W itself
    if (bf16)
      gemm(false, true, M, N, K, 1.f, static_cast<const blas::bf16*>(X), ldx,
           static_cast<const blas::bf16*>(packed), K, beta, C, ldc);
    else
      gemm(false, true, M, N, K, 1.f, static_cast<const float*>(X), ldx,
           static_cast<const float*>(packed), K, beta, C, ldc);
    return;
  }
  dnnl_memory_desc_t b = nullptr;
  dnnl_memory_desc_clone(&b, layout);
  const std::array<int64_t, 11> key = {2 + static_cast<int64_t>(types), bias != nullptr, 0,
                                       M, N, K, ldx, ldc, bits(1.f), bits(beta), 0};
  const auto m = matmul_for(key, matrix(M, K, ldx, false, src_type(types)), b,
                            matrix(M, N, ldc, false, dnnl_f32), 1.f, beta,
                            bias ? matrix(1, N, N, false, dnnl_f32) : nullptr);
  if (!m->prim || !run(*m, X, packed, C, bias)) {
    std::fprintf(stderr, "bert_gluon: oneDNN's packed product %lldx%lldx%lld failed\n",
                 (long long)M, (long long)K, (long long)N);
    std::abort();  // the packed layout has no other reader
  }
}

}  // namespace onednn

#else  // built without oneDNN's headers

namespace onednn {
size_t cached_primitives() { return 0; }
const char* implementation(Operands, int64_t, int64_t, int64_t) { return ""; }
void sgemm(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
           int64_t, float, float*, int64_t) { std::abort(); }
void gemm_bf16(bool, bool, int64_t, int64_t, int64_t, float, const blas::bf16*, int64_t,
               const blas::bf16*, int64_t, float, float*, int64_t) { std::abort(); }
size_t packed_weight_bytes(Operands, int64_t, int64_t) { std::abort(); }
void pack_weight(Operands, const void*, int64_t, int64_t, void*) { std::abort(); }
void gemm_packed(Operands, int64_t, int64_t, int64_t, const void*, int64_t, const void*, float,
                 float*, int64_t, const float*) { std::abort(); }
}  // namespace onednn

#endif

// The name of oneDNN's matmul (operands 0 float32, 1 bf16, 2 u8 x s8) for an
// M x K x N product here ("" where there is none): how the Python side tells
// it can run
extern "C" const char* bert_gluon_onednn_matmul(int operands, int64_t M, int64_t N,
                                                int64_t K) {
  if (operands < 0 || operands > 2) return "";
  return onednn::implementation(static_cast<onednn::Operands>(operands), M, N, K);
}

// How many oneDNN matmul primitives are kept now (at most kMaxMatmuls)
extern "C" uint64_t bert_gluon_onednn_primitives() { return onednn::cached_primitives(); }
