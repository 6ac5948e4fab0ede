// gemm_xwt (and both kernels behind it, GEMV and packed GEMM) against the float64
// product, on awkward sizes, all weight dtypes, strided operands, accumulate, every
// compiled SIMD target; subq::linear's and linear_group's argument checks and bias.
//
// Tolerance: an f32 dot product of K terms, in any summation order, with or without FMA,
// is within K * 2^-24 * sum_k |x_k w_k| of the exact value (the classical gamma_K bound,
// first order). We allow twice that, plus 1 ulp of f32 for the final accumulate into y.
// bf16/f16 weights are compared against the product of the *rounded* weights (the kernels
// widen exactly), so the bound is the same. A skipped, repeated or misplaced term (size
// ~|x w| ~ 0.1) is orders of magnitude above the bound at these K.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cmath>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "src/ops/common/gemm.h"
#include "src/ops/common/gemm_kernels.h"
#include "subq/ops.h"
#include "tests/reference/linear.h"
#include "tests/support/random.h"

namespace subq {
namespace {

using test::rng_for_test;

struct Dims {
  int64_t M, N, K;
};

// Below, at and above the GEMV rows, register tile and cache blocks (K crosses the
// 256-wide K block, N the per-thread column block, M the row block); narrow N forces the
// split of y by rows.
const std::vector<Dims> kDims = {
    {1, 1, 1},      {1, 7, 33},    {1, 1000, 100}, {2, 33, 1000}, {3, 100, 7},     {4, 1000, 33},
    {5, 7, 1},      {7, 33, 100},  {9, 100, 1000}, {33, 1000, 100}, {100, 33, 1000}, {1000, 7, 33},
    {1000, 100, 7}, {17, 65, 600}, {300, 50, 40},  {9, 3500, 20}, {200, 7, 50},
};

using Kernel = std::function<void(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w,
                                  DType wdt, int64_t ldw, float* y, int64_t ldy, bool accumulate)>;

struct NamedKernel {
  const char* name;
  Kernel fn;
};

const std::vector<NamedKernel> kKernels = {
    {"gemm_xwt", ops::gemm_xwt}, {"gemv", ops::gemv_xwt}, {"gemm_packed", ops::gemm_packed_xwt}};

// Weights [N, ldw] drawn in f32 and rounded to dtype; `values` gets what they hold.
Tensor make_weights(std::mt19937_64& rng, DType dtype, int64_t N, int64_t ldw, std::vector<double>& values) {
  const Tensor w32 = test::random_tensor(rng, Shape{N, ldw});
  if (dtype == DType::f32) {
    values = test::to_double(w32);
    return w32;
  }
  Tensor w = Tensor::empty(dtype, Shape{N, ldw});
  convert(w32, w);
  values = test::to_double(w);
  return w;
}

// Runs one kernel on strided operands (ldx > K, ldw > K, ldy > N) and checks every output
// against the reference and that y's padding columns stayed untouched (NaN).
// x_as_bf16: the kernel rounds x to bf16 first (MatmulPrecision::bf16), so the reference
// is the product of the rounded x; the products of bf16 pairs are exact in f32, so the
// bound is the same.
void check_case(const NamedKernel& kernel, const Dims& dims, DType dtype, bool accumulate, std::mt19937_64& rng,
                const std::string& where, bool x_as_bf16 = false) {
  const auto [M, N, K] = dims;
  const int64_t ldx = K + 3, ldw = K + 5, ldy = N + 2;
  const Tensor x = test::random_tensor(rng, Shape{M, ldx});
  std::vector<double> xv = test::to_double(x);
  if (x_as_bf16)
    for (double& v : xv) v = to_float(to_bf16(static_cast<float>(v)));
  std::vector<double> wv;
  const Tensor w = make_weights(rng, dtype, N, ldw, wv);
  const auto ref = ref::linear(xv, ldx, wv, ldw, {}, M, N, K);

  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> y(static_cast<size_t>(M * ldy), nan);
  std::vector<float> y0(static_cast<size_t>(M * N), 0.f);
  if (accumulate) {
    y0 = test::uniform(rng, y0.size());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[static_cast<size_t>(m * ldy + n)] = y0[static_cast<size_t>(m * N + n)];
  }
  kernel.fn(M, N, K, x.data<float>(), ldx, w.raw_data(), dtype, ldw, y.data(), ldy, accumulate);

  const double u = std::ldexp(1.0, -24);
  int64_t bad = 0;
  std::string first;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < ldy; ++n) {
      const float got = y[static_cast<size_t>(m * ldy + n)];
      if (n >= N) {
        if (!std::isnan(got) && bad++ == 0)
          first = "padding y[" + std::to_string(m) + "," + std::to_string(n) + "] written";
        continue;
      }
      const size_t i = static_cast<size_t>(m * N + n);
      const double want = y0[i] + ref.y[i];
      const double tol = 2.0 * static_cast<double>(K) * u * ref.abs_sum[i] + u * (std::abs(y0[i]) + std::abs(want));
      if (!(std::abs(got - want) <= tol) && bad++ == 0)
        first = "y[" + std::to_string(m) + "," + std::to_string(n) + "] = " + std::to_string(got) + ", want " +
                std::to_string(want) + " (tol " + std::to_string(tol) + ")";
    }
  }
  EXPECT_EQ(bad, 0) << where << " " << kernel.name << " M=" << M << " N=" << N << " K=" << K << " "
                    << dtype_name(dtype) << (accumulate ? " accumulate" : "") << ": " << bad
                    << " bad elements, first: " << first;
}

class GemmAllTargets : public testing::TestWithParam<DType> {};

TEST_P(GemmAllTargets, MatchesFloat64ReferenceOnEveryTarget) {
  auto rng = rng_for_test();
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    const std::string where = std::string("target ") + hwy::TargetName(target);
    for (size_t c = 0; c < kDims.size(); ++c)
      for (const auto& kernel : kKernels) check_case(kernel, kDims[c], GetParam(), c % 2 == 1, rng, where);
  }
  hwy::SetSupportedTargetsForTest(0);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GemmAllTargets, testing::Values(DType::f32, DType::bf16, DType::f16),
                         [](const testing::TestParamInfo<DType>& p) { return std::string(dtype_name(p.param)); });

// The split of work between threads must not change the result beyond rounding, for
// thread counts that do not divide the work evenly. On 16 threads, 300 x 200 splits y by
// rows and columns (W narrower than two panels per thread) on every SIMD target.
TEST(Gemm, MatchesReferenceForSeveralThreadCounts) {
  auto rng = rng_for_test();
  const int saved = num_threads();
  for (const int threads : {1, 3, 16}) {
    set_num_threads(threads);
    const std::string where = "threads " + std::to_string(threads);
    for (const Dims& d : {Dims{3, 1001, 70}, Dims{130, 333, 300}, Dims{250, 9, 17}, Dims{300, 200, 130}})
      check_case(kKernels[0], d, DType::bf16, false, rng, where);
  }
  set_num_threads(saved);
}

TEST(Gemm, ZeroKOverwritesOrKeepsY) {
  std::vector<float> y(6, std::numeric_limits<float>::quiet_NaN());
  const float x = 1.f, w = 1.f;
  ops::gemm_xwt(2, 3, 0, &x, 1, &w, DType::f32, 1, y.data(), 3, false);
  for (float v : y) EXPECT_EQ(v, 0.f);
  y.assign(6, 2.f);
  ops::gemm_xwt(2, 3, 0, &x, 1, &w, DType::f32, 1, y.data(), 3, true);
  for (float v : y) EXPECT_EQ(v, 2.f);
}

// ---- MatmulPrecision::bf16 on AMX tiles and AVX512-BF16 --------------------------------

const NamedKernel kAmx{"gemm_amx", [](int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w,
                                      DType, int64_t ldw, float* y, int64_t ldy, bool accumulate) {
                         ops::gemm_amx_bf16_xwt(M, N, K, x, ldx, static_cast<const bf16*>(w), ldw, y, ldy,
                                                accumulate);
                       }};

// Sizes at and across the kernel's edges: 32-row and 32-column blocks, 32-wide k blocks,
// the 128-column packed block, and the ragged ends of each. On 3 threads, W of fewer than
// six 32-column blocks (N = 100, 50, 7 with M >= 256) splits by rows too.
// A bf16 kernel (x rounded to bf16) against the float64 product on kDims plus its own
// edge sizes, on the default thread count, 1 and 3 threads.
void check_bf16_kernel(const NamedKernel& kernel, std::initializer_list<Dims> edges) {
  auto rng = rng_for_test();
  std::vector<Dims> dims = kDims;
  dims.insert(dims.end(), edges);
  const int saved = num_threads();
  for (const int threads : {saved, 1, 3}) {
    set_num_threads(threads);
    for (size_t c = 0; c < dims.size(); ++c)
      check_case(kernel, dims[c], DType::bf16, c % 2 == 1, rng, "threads " + std::to_string(threads), true);
  }
  set_num_threads(saved);
}

TEST(GemmAmx, MatchesFloat64ProductOfBf16RoundedX) {
  if (!ops::amx_available()) GTEST_SKIP() << "no AMX-BF16 on this CPU, or the OS refused this process the tile state";
  check_bf16_kernel(kAmx, {Dims{32, 32, 32}, Dims{33, 129, 31}, Dims{64, 128, 64}, Dims{65, 161, 1000},
                           Dims{1000, 300, 77}, Dims{31, 17, 5000}, Dims{97, 257, 33}});
}

const NamedKernel kBf16Dot{"gemm_bf16_dot",
                           [](int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w, DType,
                              int64_t ldw, float* y, int64_t ldy, bool accumulate) {
                             ops::gemm_bf16_dot_xwt(M, N, K, x, ldx, static_cast<const bf16*>(w), ldw, y, ldy,
                                                    accumulate);
                           }};

// Sizes at and across the kernel's edges: 8-row tiles, 48-column panels, the 768-column
// packed block, 256-pair k blocks (K = 513 and 1025 end in half a pair), and on 3 threads
// W of fewer than six panels, which also splits by rows.
TEST(GemmBf16Dot, MatchesFloat64ProductOfBf16RoundedX) {
  if (!ops::bf16_dot_available()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  check_bf16_kernel(kBf16Dot, {Dims{8, 48, 2}, Dims{9, 49, 3}, Dims{64, 770, 513}, Dims{65, 161, 1025},
                               Dims{1000, 300, 77}, Dims{31, 17, 5000}, Dims{97, 257, 33}});
}

// linear() rounds x only when asked to, and only against bf16 weights (on AMX tiles or
// AVX512-BF16 dot products, whichever the CPU has).
TEST(Linear, RoundsXOnlyUnderBf16Precision) {
  if (!bf16_matmul_available()) GTEST_SKIP() << "no AMX-BF16 or AVX512-BF16 on this CPU";
  auto rng = rng_for_test();
  const int64_t M = 100, K = 300, N = 70;
  const Tensor x = test::random_tensor(rng, Shape{M, K});
  std::vector<double> wv;
  const Tensor w = make_weights(rng, DType::bf16, N, K, wv);
  const Tensor w32 = Tensor::empty(DType::f32, Shape{N, K});
  convert(w, w32);
  const auto product = [&](const Tensor& weights, MatmulPrecision precision) {
    set_matmul_precision(precision);
    const Tensor y = test::nan_tensor(Shape{M, N});
    linear(x, weights, Tensor(), y);
    set_matmul_precision(MatmulPrecision::exact);
    return test::to_double(y);
  };
  const auto exact = product(w, MatmulPrecision::exact), rounded = product(w, MatmulPrecision::bf16);
  std::vector<double> xr = test::to_double(x);
  for (double& v : xr) v = to_float(to_bf16(static_cast<float>(v)));
  const auto want_exact = ref::linear(test::to_double(x), K, wv, K, {}, M, N, K);
  const auto want_rounded = ref::linear(xr, K, wv, K, {}, M, N, K);
  double scale = 0, moved = 0;
  for (double v : want_exact.abs_sum) scale = std::max(scale, v);
  for (size_t i = 0; i < exact.size(); ++i) moved = std::max(moved, std::abs(exact[i] - rounded[i]));
  const double bound = 2.0 * K * std::ldexp(1.0, -24) * scale;
  test::expect_close(exact, want_exact.y, 0.0, bound, "linear, exact precision");
  test::expect_close(rounded, want_rounded.y, 0.0, bound, "linear, bf16 precision");
  // Rounding x moves the product by ~2^-9 sqrt(K) |x w| per element, several times the
  // f32 bound: the two checks above could not both pass with the wrong rounding.
  EXPECT_GT(moved, 3 * bound) << "bf16 precision left x unrounded";
  // f32 weights are never rounded: the bf16 setting gives the exact result, bit for bit.
  EXPECT_EQ(product(w32, MatmulPrecision::bf16), product(w32, MatmulPrecision::exact));
}

// ---- subq::linear -------------------------------------------------------------------

TEST(Linear, MatchesReferenceWithBiasOnBatchedInput) {
  auto rng = rng_for_test();
  for (const DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    for (const int64_t T : {1, 37}) {
      const int64_t B = 2, K = 45, N = 67;
      const Tensor x = test::random_tensor(rng, Shape{B, T, K});
      std::vector<double> wv;
      const Tensor w = make_weights(rng, dtype, N, K, wv);
      const Tensor bias = test::random_tensor(rng, Shape{N});
      const Tensor y = test::nan_tensor(Shape{B, T, N});
      linear(x, w, bias, y);
      const auto ref = ref::linear(test::to_double(x), K, wv, K, test::to_double(bias), B * T, N, K);
      // Same bound as above, plus rounding of the bias add; uniform atol from the largest
      // |x w| sum keeps expect_close's form.
      double scale = 0;
      for (double s : ref.abs_sum) scale = std::max(scale, s);
      test::expect_close(y, ref.y, 0.0, 2.0 * (K + 1) * std::ldexp(1.0, -24) * scale,
                         std::string("linear ") + dtype_name(dtype) + " T=" + std::to_string(T));
    }
  }
}

TEST(Linear, WithoutBiasEqualsProduct) {
  auto rng = rng_for_test();
  const int64_t M = 6, K = 19, N = 23;
  const Tensor x = test::random_tensor(rng, Shape{M, K});
  std::vector<double> wv;
  const Tensor w = make_weights(rng, DType::f32, N, K, wv);
  const Tensor y = test::nan_tensor(Shape{M, N});
  linear(x, w, Tensor(), y);
  const auto ref = ref::linear(test::to_double(x), K, wv, K, {}, M, N, K);
  test::expect_close(y, ref.y, 0.0, 2.0 * K * std::ldexp(1.0, -24) * K, "linear without bias");
}

// linear_group: every output against its own float64 product (with bias where it has one)
// on every SIMD target and several thread counts. At K = 1000 the outputs' 204 rows split
// into ranges that begin and end inside outputs (70 | 3 | 130 | 1 rows); K = 77 leaves
// vector tails; M = 33 takes the GEMM path.
TEST(Linear, GroupMatchesReferenceForEachOutput) {
  auto rng = rng_for_test();
  const int saved = num_threads();
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    for (const DType dtype : {DType::f32, DType::bf16, DType::f16})
      for (const int threads : {1, 3, 16})
        for (const int64_t M : {1, 5, 33})
          for (const int64_t K : {1000, 77}) {
            set_num_threads(threads);
            const Tensor x = test::random_tensor(rng, Shape{M, K});
            std::vector<LinearOutput> outputs;
            std::vector<ref::LinearResult> want;
            for (const int64_t N : {70, 3, 130, 1}) {
              std::vector<double> wv;
              const Tensor w = make_weights(rng, dtype, N, K, wv);
              const Tensor bias = N % 2 == 0 ? test::random_tensor(rng, Shape{N}) : Tensor();
              want.push_back(ref::linear(test::to_double(x), K, wv, K, bias.defined() ? test::to_double(bias)
                                                                                      : std::vector<double>{},
                                         M, N, K));
              outputs.push_back({w, bias, test::nan_tensor(Shape{M, N})});
            }
            linear_group(x, outputs);
            for (size_t i = 0; i < outputs.size(); ++i) {
              double scale = 0;
              for (double v : want[i].abs_sum) scale = std::max(scale, v);
              test::expect_close(outputs[i].y, want[i].y, 0.0, 2.0 * (K + 1) * std::ldexp(1.0, -24) * scale,
                                 std::string("linear_group ") + hwy::TargetName(target) + " " + dtype_name(dtype) +
                                     " threads " + std::to_string(threads) + " M=" + std::to_string(M) +
                                     " K=" + std::to_string(K) + " output " + std::to_string(i));
            }
          }
  }
  hwy::SetSupportedTargetsForTest(0);
  set_num_threads(saved);
}

// Weights of different dtypes in one group run as separate products, with the same result.
TEST(Linear, GroupOfMixedDtypesMatchesReference) {
  auto rng = rng_for_test();
  const int64_t M = 2, K = 300;
  const Tensor x = test::random_tensor(rng, Shape{M, K});
  std::vector<LinearOutput> outputs;
  std::vector<ref::LinearResult> want;
  for (const DType dtype : {DType::bf16, DType::f32}) {
    std::vector<double> wv;
    const Tensor w = make_weights(rng, dtype, 90, K, wv);
    want.push_back(ref::linear(test::to_double(x), K, wv, K, {}, M, 90, K));
    outputs.push_back({w, Tensor(), test::nan_tensor(Shape{M, 90})});
  }
  linear_group(x, outputs);
  for (size_t i = 0; i < outputs.size(); ++i) {
    double scale = 0;
    for (double v : want[i].abs_sum) scale = std::max(scale, v);
    test::expect_close(outputs[i].y, want[i].y, 0.0, 2.0 * K * std::ldexp(1.0, -24) * scale,
                       "linear_group, mixed dtypes, output " + std::to_string(i));
  }
}

void expect_error_mentioning(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected subq::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Linear, RejectsBadArguments) {
  const Tensor x = Tensor::zeros(DType::f32, Shape{3, 8});
  const Tensor w = Tensor::zeros(DType::f32, Shape{5, 8});
  const Tensor y = Tensor::zeros(DType::f32, Shape{3, 5});
  const Tensor none;
  expect_error_mentioning([&] { linear(x, Tensor::zeros(DType::f32, Shape{5, 7}), none, y); }, "K = 7");
  expect_error_mentioning([&] { linear(x, Tensor::zeros(DType::i32, Shape{5, 8}), none, y); }, "weight");
  expect_error_mentioning([&] { linear(x, Tensor::zeros(DType::f32, Shape{40}), none, y); }, "2-D");
  expect_error_mentioning([&] { linear(Tensor::zeros(DType::bf16, Shape{3, 8}), w, none, y); }, "x");
  expect_error_mentioning([&] { linear(x, w, none, Tensor::zeros(DType::f32, Shape{3, 4})); }, "y");
  expect_error_mentioning([&] { linear(x, w, none, Tensor::zeros(DType::bf16, Shape{3, 5})); }, "y");
  expect_error_mentioning([&] { linear(x, w, Tensor::zeros(DType::f32, Shape{4}), y); }, "bias");
  expect_error_mentioning([&] { linear(x, w, Tensor::zeros(DType::bf16, Shape{5}), y); }, "bias");
  // A group checks every output, not only the first.
  const Tensor y2 = Tensor::zeros(DType::f32, Shape{3, 5});
  const LinearOutput bad_k[] = {{w, none, y}, {Tensor::zeros(DType::f32, Shape{5, 7}), none, y2}};
  expect_error_mentioning([&] { linear_group(x, bad_k); }, "K = 7");
  const LinearOutput bad_y[] = {{w, none, y}, {w, none, Tensor::zeros(DType::f32, Shape{3, 4})}};
  expect_error_mentioning([&] { linear_group(x, bad_y); }, "y");
}

}  // namespace
}  // namespace subq
