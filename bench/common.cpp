// Bench cases for the memory-bound common primitives (family "common"): each streams its
// input once and writes its output once, so GB/s against the triad ceiling is the measure.
#include <cmath>
#include <memory>

#include "bench/harness.h"
#include "bench/inputs.h"
#include "subq/ops.h"

namespace subq::bench {
namespace {

constexpr int64_t kWidth = 4096;

// Row-wise or element-wise op on x[T, 4096] -> y; error measured against a float64
// evaluation of `ref_row` on the first rows.
class RowOp final : public Instance {
 public:
  using Kernel = std::function<void(const Tensor& x, const Tensor& y)>;
  using RefRow = std::function<void(const float* x, double* y, int64_t n)>;
  RowOp(int64_t T, Kernel k, RefRow ref) : T_(T), kernel_(std::move(k)), ref_(std::move(ref)) {
    x_ = random_f32({T, kWidth}, -4.f, 4.f, 1);
    y_ = Tensor::empty(DType::f32, {T, kWidth});
  }
  void run() override { kernel_(x_, y_); }
  double bytes() const override { return 2.0 * 4.0 * static_cast<double>(T_ * kWidth); }
  int64_t tokens() const override { return T_; }
  std::optional<double> max_rel_err() override {
    run();
    double worst = 0;
    std::vector<double> want(kWidth);
    for (int64_t r = 0; r < std::min<int64_t>(T_, 8); ++r) {
      ref_(x_.data<float>() + r * kWidth, want.data(), kWidth);
      for (int64_t i = 0; i < kWidth; ++i) {
        const double got = y_.data<float>()[r * kWidth + i];
        worst = std::max(worst, std::abs(got - want[i]) / std::max(std::abs(want[i]), 1e-6));
      }
    }
    return worst;
  }

 private:
  int64_t T_;
  Kernel kernel_;
  RefRow ref_;
  Tensor x_, y_;
};

Case row_case(const std::string& op, RowOp::Kernel k, RowOp::RefRow ref) {
  return Case{.name = "common." + op,
              .family = "common",
              .shape = "[T, 4096] f32",
              .seq = {1024, 8192},
              .make = [k, ref](int64_t T) { return std::make_unique<RowOp>(T, k, ref); }};
}

SUBQ_BENCH_CASES(common_rows) {
  static const Tensor weight = random_f32({kWidth}, 0.5f, 1.5f, 2);
  return {
      row_case("rms_norm", [](const Tensor& x, const Tensor& y) { rms_norm(x, weight, 1e-5f, y); },
               [](const float* x, double* y, int64_t n) {
                 double ss = 0;
                 for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
                 const double inv = 1 / std::sqrt(ss / n + 1e-5);
                 for (int64_t i = 0; i < n; ++i) y[i] = x[i] * inv * weight.data<float>()[i];
               }),
      row_case("softmax", [](const Tensor& x, const Tensor& y) { softmax(x, y); },
               [](const float* x, double* y, int64_t n) {
                 double mx = x[0], sum = 0;
                 for (int64_t i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
                 for (int64_t i = 0; i < n; ++i) sum += std::exp(x[i] - mx);
                 for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i] - mx) / sum;
               }),
      row_case("silu", [](const Tensor& x, const Tensor& y) { silu(x, y); },
               [](const float* x, double* y, int64_t n) {
                 for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1 + std::exp(-static_cast<double>(x[i])));
               }),
  };
}

class ConvertBf16 final : public Instance {
 public:
  explicit ConvertBf16(int64_t n) : src_(random_f32({n}, -1e3f, 1e3f, 3)), dst_(Tensor::empty(DType::bf16, {n})) {}
  void run() override { convert(src_, dst_); }
  double bytes() const override { return 6.0 * static_cast<double>(src_.numel()); }
  std::optional<double> max_rel_err() override {
    run();
    double worst = 0;
    for (int64_t i = 0; i < std::min<int64_t>(src_.numel(), 1 << 16); ++i) {
      const double want = src_.data<float>()[i];
      worst = std::max(worst, std::abs(to_float(dst_.data<bf16>()[i]) - want) / std::abs(want));
    }
    return worst;
  }

 private:
  Tensor src_, dst_;
};

SUBQ_BENCH_CASE(convert_bf16) {
  return Case{.name = "common.convert.f32_to_bf16",
              .family = "common",
              .shape = "64M elements",
              .make = [](int64_t) { return std::make_unique<ConvertBf16>(int64_t{64} << 20); }};
}

}  // namespace
}  // namespace subq::bench
