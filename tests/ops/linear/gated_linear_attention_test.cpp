// Gated linear attention: chunked and recurrent kernels against the float64 recurrence
// (tests/reference/linear_attention.h) for every gate policy, feature map, length,
// chunk size, head size and head sharing, with random initial state in and final state
// out, on every SIMD target. Outputs are NaN-poisoned before each run.
//
// Tolerance: both kernels accumulate in f32 over up to 1000 tokens and head dims up to
// 256; errors scale with the output magnitude, so atol is relative to max|reference|
// (kAtolScale) and rtol covers elements of ordinary size.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "src/core/parallel.h"
#include "src/ops/linear/gated_linear_attention.h"
#include "subq/ops.h"
#include "tests/reference/linear_attention.h"
#include "tests/support/random.h"
#include "tests/support/targets.h"

namespace subq::test {
namespace {

using ops::FeatureMap;
using ops::LinearAlgorithm;
using ops::LinearAttentionOptions;
using ops::LinearGate;
using reference::LinearAttentionShape;

constexpr double kRtol = 2e-3;
constexpr double kAtolScale = 2e-4;

struct Case {
  LinearAttentionShape s;
  LinearAttentionOptions opt;
  float gate_lo = -0.5f, gate_hi = 0.f;  // range of log a for per-token gates
};

std::string describe(const Case& c) {
  return "B=" + std::to_string(c.s.B) + " T=" + std::to_string(c.s.T) + " Hq/Hk/Hv=" + std::to_string(c.s.Hq) + "/" +
         std::to_string(c.s.Hk) + "/" + std::to_string(c.s.Hv) + " dk=" + std::to_string(c.s.dk) +
         " dv=" + std::to_string(c.s.dv) + " chunk=" + std::to_string(c.opt.chunk) +
         " gate=" + std::to_string(static_cast<int>(c.opt.gate)) +
         " phi=" + std::to_string(static_cast<int>(c.opt.feature_map)) + " norm=" + std::to_string(c.opt.normalize);
}

Tensor make_log_gate(std::mt19937_64& rng, const Case& c) {
  const int64_t H = c.s.H();
  switch (c.opt.gate) {
    case LinearGate::none: return Tensor();
    case LinearGate::per_head: {
      // RetNet's decays: a_h = 1 - 2^(-5 - h).
      std::vector<float> g(static_cast<size_t>(H));
      for (int64_t h = 0; h < H; ++h) g[static_cast<size_t>(h)] = std::log1p(-std::exp2(-5.f - static_cast<float>(h)));
      return tensor_from(g, Shape{H});
    }
    case LinearGate::per_token:
      return random_tensor(rng, Shape{c.s.B, c.s.T, H}, c.gate_lo, c.gate_hi);
    case LinearGate::per_token_vector:
      return random_tensor(rng, Shape{c.s.B, c.s.T, H, c.s.dk}, c.gate_lo, c.gate_hi);
  }
  return Tensor();
}

// Runs both algorithms on one random problem and checks outputs and final state.
void check_case(const Case& c) {
  SCOPED_TRACE(describe(c));
  auto rng = rng_for_test();
  const auto& s = c.s;
  const int64_t H = s.H(), dvs = s.dv + (c.opt.normalize ? 1 : 0);
  const Tensor q = random_tensor(rng, Shape{s.B, s.T, s.Hq, s.dk});
  const Tensor k = random_tensor(rng, Shape{s.B, s.T, s.Hk, s.dk});
  const Tensor v = random_tensor(rng, Shape{s.B, s.T, s.Hv, s.dv});
  const Tensor g = make_log_gate(rng, c);
  Tensor state0 = random_tensor(rng, Shape{s.B, H, s.dk, dvs}, -1.f, 1.f);
  if (c.opt.normalize)  // z, the running key sum, is positive under elu+1
    for (int64_t r = 0; r < s.B * H * s.dk; ++r) state0.mutable_data<float>()[r * dvs + s.dv] = 0.5f + 0.1f * (r % 5);

  std::vector<double> ref_state = to_double(state0);
  const std::vector<double> want = reference::linear_attention(
      s, to_double(q), to_double(k), to_double(v), g.defined() ? to_double(g) : std::vector<double>{}, c.opt, ref_state);
  const double atol = kAtolScale * max_abs(want);
  const double state_atol = kAtolScale * max_abs(ref_state);
  for_each_target([&] {
  for (LinearAlgorithm alg : {LinearAlgorithm::chunked, LinearAlgorithm::recurrent}) {
    LinearAttentionOptions opt = c.opt;
    opt.algorithm = alg;
    const Tensor state = state0.contiguous();
    const Tensor o = nan_tensor(Shape{s.B, s.T, H, s.dv});
    ops::gated_linear_attention(q, k, v, g, state, o, opt);
    const std::string name = alg == LinearAlgorithm::chunked ? "chunked" : "recurrent";
    expect_close(o, want, kRtol, atol, name + " output");
    expect_close(state, ref_state, kRtol, state_atol, name + " final state");
  }
  });
}

Case base(int64_t T, int64_t dk, int64_t dv, LinearGate gate, int64_t chunk = 64) {
  Case c;
  c.s = LinearAttentionShape{.B = 2, .T = T, .Hq = 2, .Hk = 2, .Hv = 2, .dk = dk, .dv = dv};
  c.opt.gate = gate;
  c.opt.chunk = chunk;
  c.opt.scale = 1.f / std::sqrt(static_cast<float>(dk));
  return c;
}

TEST(GatedLinearAttention, NoGateWithEveryFeatureMap) {
  for (FeatureMap fm : {FeatureMap::identity, FeatureMap::elu_plus_one, FeatureMap::relu}) {
    Case c = base(65, 24, 40, LinearGate::none, 32);
    c.opt.feature_map = fm;
    check_case(c);
  }
}

TEST(GatedLinearAttention, NoGateNormalised) {
  for (int64_t T : {1, 5, 130}) {
    Case c = base(T, 32, 17, LinearGate::none, 64);
    c.opt.feature_map = FeatureMap::elu_plus_one;
    c.opt.normalize = true;
    check_case(c);
  }
}

TEST(GatedLinearAttention, ConstantDecayPerHeadRetNet) {
  for (int64_t T : {1, 63, 200}) {
    Case c = base(T, 32, 48, LinearGate::per_head, 64);
    c.s.Hq = c.s.Hk = c.s.Hv = 4;
    check_case(c);
  }
}

TEST(GatedLinearAttention, ScalarGatePerTokenOverLengths) {
  for (int64_t T : {1, 5, 63, 64, 65, 1000}) check_case(base(T, 32, 32, LinearGate::per_token, 64));
}

TEST(GatedLinearAttention, VectorGatePerTokenOverLengths) {
  for (int64_t T : {1, 5, 63, 64, 65, 1000}) check_case(base(T, 32, 24, LinearGate::per_token_vector, 64));
}

// Few heads split over chunks as well (a pass per chunk from a zero state, a pass per
// head over the chunks' start states, then the outputs), when they would occupy at most
// half the threads: 1 head on 3 threads and 1 and 3 heads on 16 take that form, the rest
// the heads form. dk = dv = 256 at 1000 tokens in 16-token chunks fills a segment's 32
// MiB of states, so the sequence goes in two segments.
TEST(GatedLinearAttention, HeadsAndChunksSplitOverThreads) {
  const int saved = num_threads();
  for (const int threads : {1, 3, 16}) {
    set_num_threads(threads);
    SCOPED_TRACE("threads " + std::to_string(threads));
    for (LinearGate g : {LinearGate::none, LinearGate::per_head, LinearGate::per_token, LinearGate::per_token_vector})
      for (const int64_t heads : {1, 3}) {
        Case c = base(150, 24, 17, g, 32);
        c.s.B = 1;
        c.s.Hq = c.s.Hk = c.s.Hv = heads;
        if (g == LinearGate::none) {
          c.opt.feature_map = FeatureMap::elu_plus_one;
          c.opt.normalize = true;
        }
        check_case(c);
      }
  }
  set_num_threads(16);
  Case c = base(1000, 256, 256, LinearGate::per_token, 16);
  c.s.B = 1;
  c.s.Hq = c.s.Hk = c.s.Hv = 3;
  check_case(c);
  set_num_threads(saved);
}

// Heads reading the same q and k (Mamba-2's groups) pack each chunk and its causal scores
// once per group. B x groups x chunks of 81,920-float blocks (dk 256, chunk 128) over the
// 32 MiB a segment may take: 2 x 4 x 14 blocks go in two segments.
TEST(GatedLinearAttention, GroupsShareChunkScores) {
  const int saved = num_threads();
  for (const int threads : {1, 3}) {
    set_num_threads(threads);
    SCOPED_TRACE("threads " + std::to_string(threads));
    for (LinearGate g : {LinearGate::none, LinearGate::per_head, LinearGate::per_token}) {
      Case c = base(150, 24, 17, g, 32);
      c.s.Hq = c.s.Hk = 2;
      c.s.Hv = 6;
      if (g == LinearGate::none) {
        c.opt.feature_map = FeatureMap::elu_plus_one;
        c.opt.normalize = true;
      }
      check_case(c);
    }
  }
  set_num_threads(saved);
  Case c = base(13 * 128 + 5, 256, 16, LinearGate::per_token, 128);
  c.s.Hq = c.s.Hk = 4;
  c.s.Hv = 8;
  check_case(c);
}

TEST(GatedLinearAttention, ChunkSizes) {
  for (int64_t chunk : {16, 37, 64, 128})
    for (LinearGate g : {LinearGate::per_token, LinearGate::per_token_vector}) check_case(base(300, 16, 16, g, chunk));
}

TEST(GatedLinearAttention, HeadDims) {
  for (auto [dk, dv] : {std::pair<int64_t, int64_t>{16, 16}, {33, 70}, {128, 64}, {256, 256}})
    for (LinearGate g : {LinearGate::per_token, LinearGate::per_token_vector}) {
      Case c = base(dk == 256 ? 70 : 150, dk, dv, g, 32);
      c.s.B = 1;
      c.s.Hq = c.s.Hk = c.s.Hv = 1;
      check_case(c);
    }
}

TEST(GatedLinearAttention, HeadSharingAndGroups) {
  // (Hq, Hk, Hv): Mamba-2 groups (q, k shared), GQA (k, v shared), MQA, one head.
  for (auto [hq, hk, hv] : {std::tuple<int64_t, int64_t, int64_t>{2, 2, 8}, {8, 2, 2}, {8, 1, 1}, {1, 1, 1}, {4, 4, 4},
                            {3, 1, 3}}) {
    Case c = base(70, 16, 16, LinearGate::per_token, 32);
    c.s.Hq = hq;
    c.s.Hk = hk;
    c.s.Hv = hv;
    check_case(c);
  }
}

TEST(GatedLinearAttention, StrongDecayAndNoDecay) {
  for (LinearGate g : {LinearGate::per_token, LinearGate::per_token_vector}) {
    Case strong = base(200, 32, 32, g, 64);
    strong.gate_lo = -30.f;  // a down to 1e-13: cumulative products underflow many times over
    strong.gate_hi = -5.f;
    check_case(strong);
    Case unit = base(200, 32, 32, g, 64);
    unit.gate_lo = unit.gate_hi = 0.f;  // a = 1 exactly
    check_case(unit);
  }
}

TEST(GatedLinearAttention, SplitSequenceEqualsWhole) {
  auto rng = rng_for_test();
  const int64_t B = 1, T = 150, H = 2, dk = 16, dv = 16, t1 = 77;
  const Tensor q = random_tensor(rng, Shape{B, T, H, dk}), k = random_tensor(rng, Shape{B, T, H, dk});
  const Tensor v = random_tensor(rng, Shape{B, T, H, dv});
  const Tensor g = random_tensor(rng, Shape{B, T, H, dk}, -0.3f, 0.f);
  LinearAttentionOptions opt;
  opt.gate = LinearGate::per_token_vector;
  opt.chunk = 32;
  const Tensor whole = nan_tensor(Shape{B, T, H, dv});
  ops::gated_linear_attention(q, k, v, g, Tensor::zeros(DType::f32, Shape{B, H, dk, dv}), whole, opt);
  const Tensor state = Tensor::zeros(DType::f32, Shape{B, H, dk, dv});
  const Tensor parts = nan_tensor(Shape{B, T, H, dv});
  for (auto [a, e] : {std::pair<int64_t, int64_t>{0, t1}, {t1, T}})
    ops::gated_linear_attention(q.slice(1, a, e), k.slice(1, a, e), v.slice(1, a, e), g.slice(1, a, e), state,
                                parts.slice(1, a, e), opt);
  expect_close(parts, to_double(whole), 1e-4, 1e-5, "two pieces vs whole");
}

// A million tokens at tiny sizes: no NaN/Inf, and still equal to the reference.
TEST(GatedLinearAttention, MillionTokens) {
  Case c = base(1'000'000, 2, 2, LinearGate::per_token, 64);
  c.s.B = 1;
  c.s.Hq = c.s.Hk = c.s.Hv = 1;
  c.gate_lo = -0.05f;
  check_case(c);
  c.opt.gate = LinearGate::none;  // a = 1: the state is a sum over all million tokens
  c.opt.feature_map = FeatureMap::elu_plus_one;
  c.opt.normalize = true;
  check_case(c);
}

TEST(GatedLinearAttention, RejectsBadArguments) {
  auto rng = rng_for_test();
  const Tensor q = random_tensor(rng, Shape{1, 4, 2, 8}), v = random_tensor(rng, Shape{1, 4, 2, 8});
  const Tensor state = Tensor::zeros(DType::f32, Shape{1, 2, 8, 8});
  const Tensor o = nan_tensor(Shape{1, 4, 2, 8});
  LinearAttentionOptions opt;
  EXPECT_THROW(ops::gated_linear_attention(q, random_tensor(rng, Shape{1, 4, 2, 9}), v, Tensor(), state, o, opt),
               Error);
  EXPECT_THROW(ops::gated_linear_attention(q, q, v, Tensor(), Tensor::zeros(DType::f32, Shape{1, 2, 8, 9}), o, opt),
               Error);
  EXPECT_THROW(ops::gated_linear_attention(q, random_tensor(rng, Shape{1, 4, 3, 8}), v, Tensor(), state, o, opt),
               Error);
  opt.gate = LinearGate::per_token;
  EXPECT_THROW(ops::gated_linear_attention(q, q, v, random_tensor(rng, Shape{1, 4, 2}, 0.1f, 1.f), state, o, opt),
               Error);
  EXPECT_THROW(ops::gated_linear_attention(q, q, v, Tensor(), state, o, opt), Error);
}

}  // namespace
}  // namespace subq::test
