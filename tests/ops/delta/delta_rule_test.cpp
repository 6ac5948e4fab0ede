// Delta rule (DeltaNet, Gated DeltaNet): chunked and recurrent kernels against the
// float64 recurrence (tests/reference/delta.h) over lengths, chunk sizes, head dims,
// head sharing, strong and no decay, with random initial state in and final state out,
// on every SIMD target. Outputs are NaN-poisoned before each run.
//
// Tolerance: f32 accumulation over up to 1000 tokens and head dims up to 256; with
// l2-normalised keys and beta in (0, 1) the state stays O(|v|), so rtol 2e-3 and atol
// 2e-4 of max|reference| (without normalisation keys are scaled to |k| < 1 so that
// I - beta k k^T stays a contraction, as in DeltaNet).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "src/ops/delta/delta_rule.h"
#include "tests/reference/delta.h"
#include "tests/support/random.h"
#include "tests/support/targets.h"

namespace subq::test {
namespace {

using ops::DeltaRuleOptions;
using ops::LinearAlgorithm;
using reference::DeltaShape;

struct Case {
  DeltaShape s;
  DeltaRuleOptions opt;
  bool gated = true;
  float gate_lo = -0.5f, gate_hi = 0.f;
};

void check_case(const Case& c, bool all_targets = true) {
  const auto& s = c.s;
  SCOPED_TRACE("B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " Hq/Hk/Hv=" + std::to_string(s.Hq) + "/" +
               std::to_string(s.Hk) + "/" + std::to_string(s.Hv) + " dk=" + std::to_string(s.dk) +
               " dv=" + std::to_string(s.dv) + " chunk=" + std::to_string(c.opt.chunk) +
               " gated=" + std::to_string(c.gated) + " l2=" + std::to_string(c.opt.l2_normalize_qk));
  auto rng = rng_for_test();
  const int64_t H = s.H();
  // Without l2 normalisation keep |k| < 1: entries in +-1/sqrt(dk).
  const float kr = c.opt.l2_normalize_qk ? 1.f : 1.f / std::sqrt(static_cast<float>(s.dk));
  const Tensor q = random_tensor(rng, Shape{s.B, s.T, s.Hq, s.dk});
  const Tensor k = random_tensor(rng, Shape{s.B, s.T, s.Hk, s.dk}, -kr, kr);
  const Tensor v = random_tensor(rng, Shape{s.B, s.T, s.Hv, s.dv});
  const Tensor beta = random_tensor(rng, Shape{s.B, s.T, H}, 0.05f, 1.f);
  const Tensor g = c.gated ? random_tensor(rng, Shape{s.B, s.T, H}, c.gate_lo, c.gate_hi) : Tensor();
  const Tensor state0 = random_tensor(rng, Shape{s.B, H, s.dk, s.dv});
  std::vector<double> ref_state = to_double(state0);
  const auto want = reference::delta_rule(s, to_double(q), to_double(k), to_double(v), to_double(beta),
                                          c.gated ? to_double(g) : std::vector<double>{}, c.opt.l2_normalize_qk,
                                          c.opt.l2_eps, c.opt.scale, ref_state);
  const double atol = 2e-4 * max_abs(want), state_atol = 2e-4 * max_abs(ref_state);
  auto body = [&] {
    for (LinearAlgorithm alg : {LinearAlgorithm::chunked, LinearAlgorithm::recurrent}) {
      DeltaRuleOptions opt = c.opt;
      opt.algorithm = alg;
      const Tensor state = state0.contiguous();
      const Tensor o = nan_tensor(Shape{s.B, s.T, H, s.dv});
      ops::delta_rule(q, k, v, beta, g, state, o, opt);
      const std::string name = alg == LinearAlgorithm::chunked ? "chunked" : "recurrent";
      expect_close(o, want, 2e-3, atol, name + " output");
      expect_close(state, ref_state, 2e-3, state_atol, name + " final state");
    }
  };
  if (all_targets) for_each_target(body);
  else body();
}

Case base(int64_t T, int64_t dk, int64_t dv, bool gated, int64_t chunk = 64) {
  Case c;
  c.s = DeltaShape{.B = 2, .T = T, .Hq = 2, .Hk = 2, .Hv = 2, .dk = dk, .dv = dv};
  c.gated = gated;
  c.opt.chunk = chunk;
  c.opt.l2_normalize_qk = true;
  c.opt.scale = 1.f / std::sqrt(static_cast<float>(dk));
  return c;
}

TEST(DeltaRule, DeltaNetOverLengths) {
  for (int64_t T : {1, 5, 63, 64, 65, 1000}) check_case(base(T, 32, 32, false));
}

TEST(DeltaRule, GatedDeltaNetOverLengths) {
  for (int64_t T : {1, 5, 63, 64, 65, 1000}) check_case(base(T, 32, 24, true));
}

TEST(DeltaRule, WithoutL2Normalisation) {
  Case c = base(150, 16, 16, true, 32);
  c.opt.l2_normalize_qk = false;
  check_case(c);
  c.gated = false;
  check_case(c);
}

TEST(DeltaRule, ChunkSizes) {
  for (int64_t chunk : {16, 37, 64, 128}) check_case(base(300, 16, 16, true, chunk));
}

TEST(DeltaRule, HeadDims) {
  for (auto [dk, dv] : {std::pair<int64_t, int64_t>{16, 16}, {33, 70}, {128, 64}, {256, 256}}) {
    Case c = base(dk == 256 ? 70 : 150, dk, dv, true, 32);
    c.s.B = 1;
    c.s.Hq = c.s.Hk = c.s.Hv = 1;
    check_case(c);
  }
}

TEST(DeltaRule, HeadSharing) {
  // Qwen3-Next: q, k with fewer heads than v; plus GQA-like and single-head layouts.
  for (auto [hq, hk, hv] : {std::tuple<int64_t, int64_t, int64_t>{2, 2, 8}, {4, 4, 8}, {8, 1, 1}, {1, 1, 1}, {3, 3, 3}}) {
    Case c = base(70, 16, 16, true, 32);
    c.s.Hq = hq;
    c.s.Hk = hk;
    c.s.Hv = hv;
    check_case(c);
  }
}

TEST(DeltaRule, StrongDecayAndNoDecay) {
  Case strong = base(200, 32, 32, true);
  strong.gate_lo = -30.f;
  strong.gate_hi = -5.f;
  check_case(strong);
  Case unit = base(200, 32, 32, true);
  unit.gate_lo = unit.gate_hi = 0.f;
  check_case(unit);
}

TEST(DeltaRule, MillionTokens) {
  Case c = base(1'000'000, 2, 2, false, 64);
  c.s.B = 1;
  c.s.Hq = c.s.Hk = c.s.Hv = 1;
  check_case(c, false);
  c.gated = true;
  c.gate_lo = -0.05f;
  check_case(c, false);
}

TEST(DeltaRule, RejectsBadArguments) {
  auto rng = rng_for_test();
  const Tensor q = random_tensor(rng, Shape{1, 4, 2, 8});
  const Tensor beta = random_tensor(rng, Shape{1, 4, 2}, 0.f, 1.f);
  const Tensor state = Tensor::zeros(DType::f32, Shape{1, 2, 8, 8});
  const Tensor o = nan_tensor(Shape{1, 4, 2, 8});
  DeltaRuleOptions opt;
  EXPECT_THROW(ops::delta_rule(q, q, q, random_tensor(rng, Shape{1, 4, 3}), Tensor(), state, o, opt), Error);
  EXPECT_THROW(ops::delta_rule(q, q, q, beta, random_tensor(rng, Shape{1, 4, 2}, 0.5f, 1.f), state, o, opt), Error);
  EXPECT_THROW(ops::delta_rule(q, q, q, beta, Tensor(), Tensor::zeros(DType::f32, Shape{1, 2, 8, 7}), o, opt), Error);
}

}  // namespace
}  // namespace subq::test
