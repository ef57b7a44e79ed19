// Entry point of the extension library (the ops register themselves in
// their own files) and the matrix-product provider of blas.h, chosen at
// load time by the Python side through bert_gluon_load_blas.
#include <dlfcn.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "mxnet/lib_api.h"
#include "blas.h"
#include "common.h"
#include "onednn.h"

using namespace mxnet::ext;

MXReturnValue initialize(int version) {
  return version >= 10700 ? MX_SUCCESS : MX_FAIL;
}

namespace {
// CBLAS constants (row-major; MKL's packed-operand extensions)
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162 };
enum { kThreadingGnu = 3 };  // MKL_THREADING_GNU

typedef void (*Sgemm)(int, int, int, int, int, int, float, const float*, int, const float*,
                      int, float, float*, int);
typedef void (*GemmBf16)(int, int, int, int, int, int, float, const uint16_t*, int,
                         const uint16_t*, int, float, float*, int);
typedef size_t (*PackSize)(int, int, int, int);
typedef void (*SgemmPack)(int, int, int, int, int, int, float, const float*, int, float*);
typedef void (*SgemmCompute)(int, int, int, int, int, int, const float*, int, const float*,
                             int, float, float*, int);
typedef void (*Bf16Pack)(int, int, int, int, int, int, const uint16_t*, int, uint16_t*);
typedef void (*Bf16Compute)(int, int, int, int, int, int, float, const uint16_t*, int,
                            const uint16_t*, int, float, float*, int);
typedef int (*SetLayer)(int);
typedef void (*SetDynamic)(int);

struct Provider {
  const char* name = "";
  Sgemm sgemm = nullptr;
  GemmBf16 gemm_bf16 = nullptr;
  PackSize sgemm_pack_size = nullptr, bf16_pack_size = nullptr;
  SgemmPack sgemm_pack = nullptr;
  SgemmCompute sgemm_compute = nullptr;
  Bf16Pack bf16_pack = nullptr;
  Bf16Compute bf16_compute = nullptr;
} provider_;

template <typename F>
F symbol(void* lib, const char* name) {
  return reinterpret_cast<F>(dlsym(lib, name));
}

int trans(bool t) { return t ? kTrans : kNoTrans; }
}  // namespace

// Load the products from MKL (path to libmkl_rt) or, failing that, from
// OpenBLAS (path to libopenblas). Returns 2 for MKL, 1 for OpenBLAS, 0 for
// neither; `error` (of `size` bytes) says why MKL was not taken.
extern "C" int bert_gluon_load_blas(const char* mkl, const char* openblas, char* error,
                                    int size) {
  error[0] = '\0';
  if (mkl && *mkl) {
    // MKL's GNU threading layer calls the OpenMP runtime MXNet and these ops
    // run on: make the loaded libgomp's symbols visible to it
    dlopen("libgomp.so.1", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
    void* lib = dlopen(mkl, RTLD_NOW | RTLD_LOCAL);
    SetLayer set_layer = lib ? symbol<SetLayer>(lib, "MKL_Set_Threading_Layer") : nullptr;
    Provider p;
    SetDynamic set_dynamic = lib ? symbol<SetDynamic>(lib, "MKL_Set_Dynamic") : nullptr;
    if (lib && set_layer && set_dynamic && set_layer(kThreadingGnu) >= 0) {
      // Threads as OpenMP gives them: all of omp_get_max_threads() outside a
      // parallel region, the calling one inside (MKL's own dynamic choice
      // made the ops' per-block products in parallel regions ~40% slower)
      set_dynamic(0);
      p.name = "mkl";
      p.sgemm = symbol<Sgemm>(lib, "cblas_sgemm");
      p.gemm_bf16 = symbol<GemmBf16>(lib, "cblas_gemm_bf16bf16f32");
      p.sgemm_pack_size = symbol<PackSize>(lib, "cblas_sgemm_pack_get_size");
      p.sgemm_pack = symbol<SgemmPack>(lib, "cblas_sgemm_pack");
      p.sgemm_compute = symbol<SgemmCompute>(lib, "cblas_sgemm_compute");
      p.bf16_pack_size = symbol<PackSize>(lib, "cblas_gemm_bf16bf16f32_pack_get_size");
      p.bf16_pack = symbol<Bf16Pack>(lib, "cblas_gemm_bf16bf16f32_pack");
      p.bf16_compute = symbol<Bf16Compute>(lib, "cblas_gemm_bf16bf16f32_compute");
    }
    if (p.sgemm && p.gemm_bf16 && p.sgemm_pack_size && p.sgemm_pack && p.sgemm_compute
        && p.bf16_pack_size && p.bf16_pack && p.bf16_compute) {
      provider_ = p;
      return 2;
    }
    std::snprintf(error, size, "%s", lib ? "libmkl_rt lacks a needed function" : dlerror());
  }
  if (openblas && *openblas) {
    void* lib = dlopen(openblas, RTLD_NOW | RTLD_LOCAL);
    Sgemm sgemm = lib ? symbol<Sgemm>(lib, "cblas_sgemm") : nullptr;
    if (sgemm) {
      provider_ = Provider();
      provider_.name = "openblas";
      provider_.sgemm = sgemm;
      return 1;
    }
  }
  return 0;
}

extern "C" const char* bert_gluon_blas_provider() { return provider_.name; }

// The i-th `products` attribute (common.h) and its operands' precision
// (*precision: 0 float32, 1 bf16, 2 int8), or nullptr past the last: what
// the Python side checks its own table against
extern "C" const char* bert_gluon_products(int i, int* precision) {
  if (i < 0 || i >= static_cast<int>(sizeof(kProducts) / sizeof(kProducts[0]))) return nullptr;
  const blas::Products by = kProducts[i].by;
  *precision = blas::int8_operands(by) ? 2 : blas::bf16_operands(by) ? 1 : 0;
  return kProducts[i].name;
}

namespace blas {

void sgemm(Products by, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
           float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
           float* C, int64_t ldc) {
  if (by == Products::onednn)
    return onednn::sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  provider_.sgemm(kRowMajor, trans(trans_a), trans(trans_b), M, N, K, alpha, A, lda, B, ldb,
                  beta, C, ldc);
}

void gemm_bf16(Products by, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
               float alpha, const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta,
               float* C, int64_t ldc) {
  if (by == Products::onednn_bf16)
    return onednn::gemm_bf16(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  provider_.gemm_bf16(kRowMajor, trans(trans_a), trans(trans_b), M, N, K, alpha, A, lda, B,
                      ldb, beta, C, ldc);
}

size_t packed_weight_bytes(Products by, int64_t M, int64_t N, int64_t K) {
  switch (by) {
    case Products::onednn: return onednn::packed_weight_bytes(onednn::Operands::f32, N, K);
    case Products::onednn_bf16: return onednn::packed_weight_bytes(onednn::Operands::bf16, N, K);
    case Products::onednn_int8: return onednn::packed_weight_bytes(onednn::Operands::u8s8, N, K);
    case Products::mkl_bf16: return provider_.bf16_pack_size(kBMatrix, M, N, K);
    case Products::blas: break;
  }
  if (provider_.sgemm_pack_size) return provider_.sgemm_pack_size(kBMatrix, M, N, K);
  return N * K * sizeof(float);
}

void pack_weight(Products by, const float* W, int64_t N, int64_t K, int64_t M, void* packed) {
  if (by == Products::onednn) return onednn::pack_weight(onednn::Operands::f32, W, N, K, packed);
  if (provider_.sgemm_pack) {  // B = W^T, (K, N)
    provider_.sgemm_pack(kRowMajor, kBMatrix, kTrans, M, N, K, 1.f, W, K,
                         static_cast<float*>(packed));
  } else {
    std::memcpy(packed, W, N * K * sizeof(float));
  }
}

void pack_weight_bf16(Products by, const bf16* W, int64_t N, int64_t K, int64_t M,
                      void* packed) {
  if (by == Products::onednn_bf16) return onednn::pack_weight(onednn::Operands::bf16, W, N, K, packed);
  provider_.bf16_pack(kRowMajor, kBMatrix, kTrans, M, N, K, W, K, static_cast<bf16*>(packed));
}

void gemm_packed(Products by, int64_t M, int64_t N, int64_t K, const float* X, int64_t ldx,
                 const void* packed, float beta, float* C, int64_t ldc, const float* bias) {
  if (by == Products::onednn)
    return onednn::gemm_packed(onednn::Operands::f32, M, N, K, X, ldx, packed, beta, C, ldc, bias);
  if (bias) beta = start_with_bias(M, N, beta, C, ldc, bias);
  if (provider_.sgemm_compute) {
    provider_.sgemm_compute(kRowMajor, kNoTrans, kPacked, M, N, K, X, ldx,
                            static_cast<const float*>(packed), K, beta, C, ldc);
  } else {
    sgemm(by, false, true, M, N, K, 1.f, X, ldx, static_cast<const float*>(packed), K, beta,
          C, ldc);
  }
}

void gemm_packed_bf16(Products by, int64_t M, int64_t N, int64_t K, const bf16* X,
                      int64_t ldx, const void* packed, float beta, float* C, int64_t ldc,
                      const float* bias) {
  if (by == Products::onednn_bf16)
    return onednn::gemm_packed(onednn::Operands::bf16, M, N, K, X, ldx, packed, beta, C, ldc, bias);
  if (bias) beta = start_with_bias(M, N, beta, C, ldc, bias);
  provider_.bf16_compute(kRowMajor, kNoTrans, kPacked, M, N, K, 1.f, X, ldx,
                         static_cast<const bf16*>(packed), K, beta, C, ldc);
}

void pack_weight_s8(Products by, const int8_t* W, int64_t N, int64_t K, void* packed) {
  if (by != Products::onednn_int8) std::abort();  // the only int8 provider
  onednn::pack_weight(onednn::Operands::u8s8, W, N, K, packed);
}

void gemm_packed_u8s8(Products by, int64_t M, int64_t N, int64_t K, const uint8_t* X,
                      int64_t ldx, const void* packed, float* C, int64_t ldc) {
  if (by != Products::onednn_int8) std::abort();
  onednn::gemm_packed(onednn::Operands::u8s8, M, N, K, X, ldx, packed, 0.f, C, ldc, nullptr);
}

}  // namespace blas
