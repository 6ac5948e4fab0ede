// Bench cases for y = x · W^T (family "common"): the packed GEMM at square sizes and at a
// prefill-sized MLP projection (M=512 tokens, N=14336, K=4096) with f32 and bf16 weights,
// and the decode GEMV (M=1) with bf16 and f32 weights. Each has an OpenBLAS peer on the
// same inputs (sgemm / sgemv on f32 weights: OpenBLAS 0.3.21 has no bf16-weight f32
// kernel, so the bf16 cases' peers read the widened f32 weights), run at subq's threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "bench/inputs.h"
#include "subq/ops.h"

#if SUBQ_HAVE_BLAS
#include <cblas.h>
#endif

namespace subq::bench {
namespace {

// x[M, K] f32, W[N, K] in wdt (and its exact f32 widening for the peer and the reference).
struct Operands {
  int64_t M, N, K;
  DType wdt;
  Tensor x, w, w32, y;

  Operands(int64_t m, int64_t n, int64_t k, DType dt) : M(m), N(n), K(k), wdt(dt) {
    x = Tensor::empty(DType::f32, Shape{M, K});
    fill_uniform(x.mutable_data<float>(), M * K, -1.f, 1.f, 1);
    w32 = Tensor::empty(DType::f32, Shape{N, K});
    fill_uniform(w32.mutable_data<float>(), N * K, -1.f, 1.f, 2);
    if (wdt == DType::f32) {
      w = w32;
    } else {
      w = Tensor::empty(wdt, Shape{N, K});
      convert(w32, w);
      convert(w, w32);
    }
    y = Tensor::empty(DType::f32, Shape{M, N});
  }

  double flops() const { return 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K); }
  // Compulsory traffic: the weights once, x once, y once.
  double bytes(size_t weight_bytes) const {
    return static_cast<double>(N * K) * static_cast<double>(weight_bytes) + 4.0 * static_cast<double>(M * K + M * N);
  }

  // Max over sampled outputs of |y - exact| / sum_k |x w|: error relative to the scale at
  // which f32 accumulation rounds (signed random data makes |exact| itself arbitrarily small).
  double sampled_rel_err() const {
    const float* xp = x.data<float>();
    const float* wp = w32.data<float>();
    const float* yp = y.data<float>();
    double worst = 0;
    for (int64_t s = 0; s < 16; ++s) {
      const int64_t m = (s * 7919) % M, n = (s * 104729) % N;
      double exact = 0, scale = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(xp[m * K + k]) * wp[n * K + k];
        exact += p;
        scale += std::abs(p);
      }
      worst = std::max(worst, std::abs(yp[m * N + n] - exact) / scale);
    }
    return worst;
  }
};

class OursRun final : public Instance {
 public:
  OursRun(int64_t M, int64_t N, int64_t K, DType wdt) : op_(M, N, K, wdt) {}
  void run() override { linear(op_.x, op_.w, Tensor(), op_.y); }
  double flops() const override { return op_.flops(); }
  double bytes() const override { return op_.bytes(dtype_size(op_.wdt)); }
  int64_t tokens() const override { return op_.M; }
  std::optional<double> max_rel_err() override {
    run();
    return op_.sampled_rel_err();
  }

 private:
  Operands op_;
};

#if SUBQ_HAVE_BLAS
class OpenBlasRun final : public Instance {
 public:
  OpenBlasRun(int64_t M, int64_t N, int64_t K, DType wdt) : op_(M, N, K, wdt) {
    openblas_set_num_threads(num_threads());
  }
  void run() override {
    const float* x = op_.x.data<float>();
    const float* w = op_.w32.data<float>();
    float* y = op_.y.mutable_data<float>();
    const auto M = static_cast<blasint>(op_.M), N = static_cast<blasint>(op_.N), K = static_cast<blasint>(op_.K);
    if (M == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.f, w, K, x, 1, 0.f, y, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, x, K, w, K, 0.f, y, N);
  }
  double flops() const override { return op_.flops(); }
  double bytes() const override { return op_.bytes(sizeof(float)); }
  int64_t tokens() const override { return op_.M; }
  std::optional<double> max_rel_err() override {
    run();
    return op_.sampled_rel_err();
  }

 private:
  Operands op_;
};
#endif

void add(std::vector<Case>& cases, const std::string& name, int64_t M, int64_t N, int64_t K, DType wdt) {
  const std::string shape = "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + " " +
                            dtype_name(wdt) + " weights";
  cases.push_back(Case{.name = name,
                       .family = "common",
                       .shape = shape,
                       .make = [=](int64_t) { return std::make_unique<OursRun>(M, N, K, wdt); }});
#if SUBQ_HAVE_BLAS
  cases.push_back(Case{.name = name + ".openblas",
                       .family = "common",
                       .shape = "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                                " f32 weights",
                       .peer_of = name,
                       .make = [=](int64_t) { return std::make_unique<OpenBlasRun>(M, N, K, wdt); }});
#endif
}

SUBQ_BENCH_CASES(gemm) {
  std::vector<Case> cases;
  for (const int64_t n : {1024, 2048, 4096}) add(cases, "common.gemm.f32." + std::to_string(n), n, n, n, DType::f32);
  add(cases, "common.gemm.f32.m512_n14336_k4096", 512, 14336, 4096, DType::f32);
  add(cases, "common.gemm.bf16.m512_n14336_k4096", 512, 14336, 4096, DType::bf16);
  add(cases, "common.gemv.bf16.n14336_k4096", 1, 14336, 4096, DType::bf16);
  add(cases, "common.gemv.f32.n14336_k4096", 1, 14336, 4096, DType::f32);
  return cases;
}

}  // namespace
}  // namespace subq::bench
