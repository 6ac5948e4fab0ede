// Selective scan (Mamba-1) against the float64 recurrence: T = 1, odd and longer T, D not
// a multiple of any vector width, N = 1 / 16 / 64 / 256, groups > 1 with group sizes that
// are not lane multiples, every optional input on and off, both lane mappings, a random
// non-zero initial state, the final state, and pieces that must chain into one sequence.
// Every kernel test runs under each compiled SIMD target.
#include <gtest/gtest.h>

#include <cmath>

#include "src/ops/ssm/selective_scan.h"
#include "tests/reference/ssm.h"
#include "tests/support/random.h"
#include "tests/support/targets.h"

namespace subq {
namespace {

using test::expect_close;
using test::for_each_target;
using test::nan_tensor;
using test::random_tensor;
using test::rng_for_test;
using test::to_double;

// f32 state and a sum of N f32 products per output; Highway's exp is ~1 ulp. Errors stay
// below ~1e-5 relative to the output scale (outputs are O(1)), so this leaves margin.
constexpr double kRtol = 1e-4, kAtol = 2e-5;

struct ScanInputs {
  int64_t B, T, D, N, G;
  Tensor x, dt, dt_bias, A, Bm, Cm, Dskip, z, h0;
};

// Mamba-like ranges: softplus(dt + bias) in ~[0.005, 1], A = -exp(U(-1, 2.5)).
ScanInputs make_inputs(std::mt19937_64& rng, int64_t B, int64_t T, int64_t D, int64_t N, int64_t G) {
  ScanInputs s{B, T, D, N, G, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  s.x = random_tensor(rng, {B, T, D}, -2, 2);
  s.dt = random_tensor(rng, {B, T, D}, -3, 1);
  s.dt_bias = random_tensor(rng, {D}, -2, 0);
  s.A = random_tensor(rng, {D, N}, -1, 2.5);
  float* a = s.A.mutable_data<float>();
  for (int64_t i = 0; i < D * N; ++i) a[i] = -std::exp(a[i]);
  s.Bm = random_tensor(rng, {B, T, G, N});
  s.Cm = random_tensor(rng, {B, T, G, N});
  s.Dskip = random_tensor(rng, {D});
  s.z = random_tensor(rng, {B, T, D}, -3, 3);
  s.h0 = random_tensor(rng, {B, D, N});
  return s;
}

void check_scan(const ScanInputs& s, bool bias, bool softplus, bool dskip, bool gate, ops::ScanLanes lanes) {
  const Tensor h = s.h0.contiguous();
  const Tensor y = nan_tensor({s.B, s.T, s.D});
  ops::selective_scan(s.x, s.dt, bias ? s.dt_bias : Tensor(), softplus, s.A, s.Bm, s.Cm, dskip ? s.Dskip : Tensor(),
                      gate ? s.z : Tensor(), h, y, lanes);
  ref::Vec hw = to_double(s.h0);
  const ref::Vec want = ref::selective_scan(to_double(s.x), to_double(s.dt), bias ? to_double(s.dt_bias) : ref::Vec{},
                                            softplus, to_double(s.A), to_double(s.Bm), to_double(s.Cm),
                                            dskip ? to_double(s.Dskip) : ref::Vec{}, gate ? to_double(s.z) : ref::Vec{},
                                            hw, s.B, s.T, s.D, s.N, s.G);
  const std::string what = "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " D=" + std::to_string(s.D) +
                           " N=" + std::to_string(s.N) + " G=" + std::to_string(s.G) +
                           (lanes == ops::ScanLanes::state ? " lanes=state" : " lanes=channels");
  expect_close(y, want, kRtol, kAtol, what + " y");
  expect_close(h, hw, kRtol, kAtol, what + " final state");
}

TEST(SelectiveScan, MatchesReference) {
  auto rng = rng_for_test();
  struct Size { int64_t B, T, D, N, G; };
  const Size sizes[] = {{2, 1, 5, 1, 1},   {3, 127, 37, 16, 1}, {2, 33, 40, 64, 4},
                        {1, 9, 21, 256, 3}, {2, 50, 32, 16, 2},  {1, 3, 7, 16, 1}, {1, 1000, 20, 16, 2}};
  for_each_target([&] {
    for (const Size& z : sizes) {
      const ScanInputs s = make_inputs(rng, z.B, z.T, z.D, z.N, z.G);
      for (auto lanes : {ops::ScanLanes::channels, ops::ScanLanes::state}) check_scan(s, true, true, true, true, lanes);
    }
  });
}

TEST(SelectiveScan, OptionalInputsOff) {
  auto rng = rng_for_test();
  for_each_target([&] {
    const ScanInputs s = make_inputs(rng, 2, 31, 19, 16, 1);
    for (auto lanes : {ops::ScanLanes::channels, ops::ScanLanes::state}) {
      check_scan(s, false, true, true, true, lanes);
      check_scan(s, true, true, false, false, lanes);
      // Without softplus dt must already be positive: shift the raw values.
      ScanInputs p = s;
      p.dt = random_tensor(rng, {s.B, s.T, s.D}, 0.01f, 0.5f);
      check_scan(p, false, false, true, false, lanes);
    }
  });
}

// Scanning [0, t) and then [t, T) from the carried state equals one scan over [0, T).
TEST(SelectiveScan, PiecesChainThroughTheState) {
  auto rng = rng_for_test();
  const ScanInputs s = make_inputs(rng, 2, 41, 24, 16, 2);
  const Tensor h_whole = s.h0.contiguous();
  const Tensor y_whole = nan_tensor({s.B, s.T, s.D});
  ops::selective_scan(s.x, s.dt, s.dt_bias, true, s.A, s.Bm, s.Cm, s.Dskip, s.z, h_whole, y_whole);
  const Tensor h = s.h0.contiguous();
  std::vector<double> got;
  std::vector<std::vector<double>> parts;
  int64_t t0 = 0;
  for (int64_t len : {int64_t{1}, int64_t{17}, int64_t{1}, int64_t{22}}) {
    auto piece = [&](const Tensor& t) { return t.slice(1, t0, t0 + len).contiguous(); };
    const Tensor y = nan_tensor({s.B, len, s.D});
    ops::selective_scan(piece(s.x), piece(s.dt), s.dt_bias, true, s.A, piece(s.Bm), piece(s.Cm), s.Dskip, piece(s.z), h, y);
    parts.push_back(to_double(y));
    t0 += len;
  }
  ASSERT_EQ(t0, s.T);
  for (int64_t b = 0; b < s.B; ++b) {
    for (const auto& p : parts) {
      const size_t len = p.size() / static_cast<size_t>(s.B);
      got.insert(got.end(), p.begin() + static_cast<std::ptrdiff_t>(b * len), p.begin() + static_cast<std::ptrdiff_t>((b + 1) * len));
    }
  }
  // Same kernel, same order of operations: the split changes nothing but where h is stored.
  expect_close(got, to_double(y_whole), 0, 0, "pieces vs whole");
  expect_close(h, to_double(h_whole), 0, 0, "final state");
}

// T = 1,000,000 on a tiny width, with decays from 0.5 down to ~1 - 1e-5 per step (memories
// of ~100k tokens): no NaN/Inf anywhere, and the final state and last outputs match the
// float64 recurrence. Contraction keeps f32 rounding from accumulating.
TEST(SelectiveScan, MillionTokensStayFiniteAndExact) {
  auto rng = rng_for_test();
  const int64_t B = 1, T = 1'000'000, D = 3, N = 4;
  const Tensor x = random_tensor(rng, {B, T, D}, -1, 1);
  const Tensor dt = random_tensor(rng, {B, T, D}, 0.001f, 0.1f);
  const Tensor A = Tensor::empty(DType::f32, {D, N});
  for (int64_t i = 0; i < D * N; ++i) A.mutable_data<float>()[i] = -std::pow(10.f, -2.f + static_cast<float>(i % 5));
  const Tensor Bm = random_tensor(rng, {B, T, N}), Cm = random_tensor(rng, {B, T, N});
  const Tensor h = random_tensor(rng, {B, D, N});
  ref::Vec hw = to_double(h);
  const Tensor y = nan_tensor({B, T, D});
  ops::selective_scan(x, dt, Tensor(), false, A, Bm, Cm, Tensor(), Tensor(), h, y);
  const ref::Vec want = ref::selective_scan(to_double(x), to_double(dt), {}, false, to_double(A), to_double(Bm),
                                            to_double(Cm), {}, {}, hw, B, T, D, N, 1);
  const ref::Vec got = to_double(y);
  size_t bad = 0;
  for (double v : got) bad += !std::isfinite(v);
  EXPECT_EQ(bad, 0u) << "non-finite outputs";
  // The longest memories sum ~1e5 terms of O(0.05): states up to ~1e2, so relative 1e-4.
  expect_close(h, hw, 1e-4, 1e-4, "final state after 1M tokens");
  const ref::Vec tail_got(got.end() - 1000, got.end()), tail_want(want.end() - 1000, want.end());
  expect_close(tail_got, tail_want, 1e-4, 1e-4, "last outputs after 1M tokens");
}

TEST(SelectiveScan, RejectsBadArguments) {
  auto rng = rng_for_test();
  const ScanInputs s = make_inputs(rng, 2, 5, 8, 4, 2);
  const Tensor h = Tensor::zeros(DType::f32, {2, 8, 4}), y = Tensor::zeros(DType::f32, {2, 5, 8});
  auto call = [&](const Tensor& x, const Tensor& A, const Tensor& Bm, const Tensor& hh, const Tensor& dt_bias) {
    ops::selective_scan(x, s.dt, dt_bias, true, A, Bm, s.Cm, s.Dskip, s.z, hh, y);
  };
  EXPECT_NO_THROW(call(s.x, s.A, s.Bm, h, s.dt_bias));
  EXPECT_THROW(call(random_tensor(rng, {2, 5, 7}), s.A, s.Bm, h, s.dt_bias), Error);
  EXPECT_THROW(call(s.x, random_tensor(rng, {8, 300}), s.Bm, h, s.dt_bias), Error);
  EXPECT_THROW(call(s.x, s.A, random_tensor(rng, {2, 5, 3, 4}), h, s.dt_bias), Error);  // 3 groups: not like C
  EXPECT_THROW(call(s.x, s.A, s.Bm, Tensor::zeros(DType::f32, {2, 8, 5}), s.dt_bias), Error);
  EXPECT_THROW(call(s.x, s.A, s.Bm, h, random_tensor(rng, {9})), Error);
  EXPECT_THROW(ops::selective_scan(s.x, s.dt, s.dt_bias, true, s.A, random_tensor(rng, {2, 5, 3, 4}),
                                   random_tensor(rng, {2, 5, 3, 4}), s.Dskip, s.z, h, y), Error);  // 3 does not divide 8
}

}  // namespace
}  // namespace subq
