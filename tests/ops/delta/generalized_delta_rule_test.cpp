// Generalized (DPLR) delta rule, RWKV-7's WKV-7: chunked and recurrent kernels against
// the float64 recurrence (tests/reference/delta.h) over lengths, chunk sizes, head dims,
// strong and no decay, RWKV-7's low-rank form and free a, b, with a random initial state
// in and the final state out, on every SIMD target. Outputs are NaN-poisoned first.
//
// Inputs follow RWKV-7 unless a case says otherwise: kappa = normalised random vector,
// a = -kappa, b = kappa * eta with eta in (0, 1), log_w in [-0.61, 0] (RWKV-7's
// w = exp(-0.606531 sigmoid(.))), so the transition diag(w) - (kappa eta) kappa^T keeps
// the state O(|k| |v|) over long inputs. Tolerance as for the delta rule: rtol 2e-3,
// atol 2e-4 of max|reference|.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "src/core/parallel.h"
#include "src/ops/delta/generalized_delta_rule.h"
#include "tests/reference/delta.h"
#include "tests/support/random.h"
#include "tests/support/targets.h"

namespace subq::test {
namespace {

using ops::GeneralizedDeltaRuleOptions;
using ops::LinearAlgorithm;
using reference::DeltaShape;

struct Case {
  int64_t B = 2, T = 1, H = 2, dk = 32, dv = 32;
  GeneralizedDeltaRuleOptions opt;
  float log_w_lo = -0.61f, log_w_hi = 0.f;
  bool rwkv_low_rank = true;  // else a, b uniform in +-0.5 / sqrt(dk)
};

// a = -kappa, b = kappa * eta for kappa a unit vector per (b, t, h).
void rwkv_low_rank(std::mt19937_64& rng, const Case& c, Tensor& a, Tensor& b) {
  const Shape shape{c.B, c.T, c.H, c.dk};
  const Tensor kappa = random_tensor(rng, shape), eta = random_tensor(rng, shape, 0.f, 1.f);
  a = Tensor::empty(DType::f32, shape);
  b = Tensor::empty(DType::f32, shape);
  const float* kp = kappa.data<float>();
  const float* ep = eta.data<float>();
  float* ap = a.mutable_data<float>();
  float* bp = b.mutable_data<float>();
  for (int64_t r = 0; r < c.B * c.T * c.H; ++r) {
    double ss = 0;
    for (int64_t d = 0; d < c.dk; ++d) ss += static_cast<double>(kp[r * c.dk + d]) * kp[r * c.dk + d];
    const float inv = static_cast<float>(1 / std::sqrt(ss + 1e-12));
    for (int64_t d = 0; d < c.dk; ++d) {
      const float unit = kp[r * c.dk + d] * inv;
      ap[r * c.dk + d] = -unit;
      bp[r * c.dk + d] = unit * ep[r * c.dk + d];
    }
  }
}

void check_case(const Case& c, bool all_targets = true) {
  SCOPED_TRACE("B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
               " dk=" + std::to_string(c.dk) + " dv=" + std::to_string(c.dv) + " chunk=" + std::to_string(c.opt.chunk) +
               " log_w in [" + std::to_string(c.log_w_lo) + ", " + std::to_string(c.log_w_hi) + "]" +
               (c.rwkv_low_rank ? "" : " free a, b"));
  auto rng = rng_for_test();
  const Shape keys{c.B, c.T, c.H, c.dk};
  const float kr = 1.f / std::sqrt(static_cast<float>(c.dk));
  const Tensor q = random_tensor(rng, keys);
  const Tensor k = random_tensor(rng, keys, -kr, kr);
  const Tensor v = random_tensor(rng, Shape{c.B, c.T, c.H, c.dv});
  const Tensor log_w = random_tensor(rng, keys, c.log_w_lo, c.log_w_hi);
  Tensor a, b;
  if (c.rwkv_low_rank) {
    rwkv_low_rank(rng, c, a, b);
  } else {
    a = random_tensor(rng, keys, -0.5f * kr, 0.5f * kr);
    b = random_tensor(rng, keys, -0.5f * kr, 0.5f * kr);
  }
  const Tensor state0 = random_tensor(rng, Shape{c.B, c.H, c.dk, c.dv});
  std::vector<double> ref_state = to_double(state0);
  const DeltaShape s{.B = c.B, .T = c.T, .Hq = c.H, .Hk = c.H, .Hv = c.H, .dk = c.dk, .dv = c.dv};
  const auto want = reference::generalized_delta_rule(s, to_double(q), to_double(k), to_double(v), to_double(a),
                                                      to_double(b), to_double(log_w), c.opt.scale, ref_state);
  const double atol = 2e-4 * max_abs(want), state_atol = 2e-4 * max_abs(ref_state);
  auto body = [&] {
    for (LinearAlgorithm alg : {LinearAlgorithm::chunked, LinearAlgorithm::recurrent}) {
      GeneralizedDeltaRuleOptions opt = c.opt;
      opt.algorithm = alg;
      const Tensor state = state0.contiguous();
      const Tensor o = nan_tensor(Shape{c.B, c.T, c.H, c.dv});
      ops::generalized_delta_rule(q, k, v, a, b, log_w, state, o, opt);
      const std::string name = alg == LinearAlgorithm::chunked ? "chunked" : "recurrent";
      expect_close(o, want, 2e-3, atol, name + " output");
      expect_close(state, ref_state, 2e-3, state_atol, name + " final state");
    }
  };
  if (all_targets) for_each_target(body);
  else body();
}

Case base(int64_t T, int64_t dk, int64_t dv, int64_t chunk = 64) {
  Case c;
  c.T = T;
  c.dk = dk;
  c.dv = dv;
  c.opt.chunk = chunk;
  return c;
}

TEST(GeneralizedDeltaRule, OverLengths) {
  for (int64_t T : {1, 5, 15, 16, 17, 63, 64, 65, 1000}) check_case(base(T, 32, 24));
}

TEST(GeneralizedDeltaRule, ChunkSizes) {
  for (int64_t chunk : {1, 16, 37, 64, 128}) check_case(base(300, 16, 16, chunk));
}

TEST(GeneralizedDeltaRule, HeadDims) {
  for (auto [dk, dv] : {std::pair<int64_t, int64_t>{16, 16}, {33, 70}, {64, 64}, {128, 64}, {256, 256}}) {
    Case c = base(dk == 256 ? 70 : 150, dk, dv);
    c.B = 1;
    c.H = 1;
    check_case(c);
  }
}

TEST(GeneralizedDeltaRule, ManyHeadsAndScale) {
  Case c = base(130, 64, 64);
  c.B = 3;
  c.H = 5;
  c.opt.scale = 0.125f;
  check_case(c);
}

TEST(GeneralizedDeltaRule, StrongDecayAndNoDecay) {
  Case strong = base(200, 32, 32);
  strong.log_w_lo = -30.f;
  strong.log_w_hi = -5.f;
  check_case(strong);
  Case unit = base(200, 32, 32);
  unit.log_w_lo = unit.log_w_hi = 0.f;
  check_case(unit);
}

TEST(GeneralizedDeltaRule, FreeLowRankTerms) {
  // a and b not tied to one key direction; decays keep the transition a contraction.
  Case c = base(150, 24, 40, 32);
  c.rwkv_low_rank = false;
  c.log_w_lo = -1.f;
  c.log_w_hi = -0.3f;
  check_case(c);
}

TEST(GeneralizedDeltaRule, MillionTokens) {
  Case c = base(1'000'000, 4, 4);
  c.B = 1;
  c.H = 1;
  check_case(c, false);
}

TEST(GeneralizedDeltaRule, RejectsBadArguments) {
  auto rng = rng_for_test();
  const Tensor x = random_tensor(rng, Shape{1, 4, 2, 8});
  const Tensor log_w = random_tensor(rng, Shape{1, 4, 2, 8}, -1.f, 0.f);
  const Tensor state = Tensor::zeros(DType::f32, Shape{1, 2, 8, 8});
  const Tensor o = nan_tensor(Shape{1, 4, 2, 8});
  const GeneralizedDeltaRuleOptions opt;
  EXPECT_NO_THROW(ops::generalized_delta_rule(x, x, x, x, x, log_w, state, o, opt));
  const Tensor positive = random_tensor(rng, Shape{1, 4, 2, 8}, 0.5f, 1.f);
  EXPECT_THROW(ops::generalized_delta_rule(x, x, x, x, x, positive, state, o, opt), Error);
  const Tensor shared = random_tensor(rng, Shape{1, 4, 1, 8});
  EXPECT_THROW(ops::generalized_delta_rule(x, x, x, shared, x, log_w, state, o, opt), Error);
  EXPECT_THROW(ops::generalized_delta_rule(x, x, x, x, x, log_w, Tensor::zeros(DType::f32, Shape{1, 2, 8, 7}), o, opt),
               Error);
  EXPECT_THROW(ops::generalized_delta_rule(x, x, x, x, Tensor(), log_w, state, o, opt), Error);
  GeneralizedDeltaRuleOptions bad_chunk;
  bad_chunk.chunk = 0;
  EXPECT_THROW(ops::generalized_delta_rule(x, x, x, x, x, log_w, state, o, bad_chunk), Error);
}

// The decay check runs on the pool's threads over long inputs: one positive value or NaN
// far into a 3000-token input is still found, named, and thrown on the calling thread.
// Long prefills check log_w as the recurrence reads it: the error still names the value,
// and the caller's states stay as they were (also where their rows are padded: d = 40).
TEST(GeneralizedDeltaRule, FindsOneBadDecayInALongInput) {
  auto rng = rng_for_test();
  const int saved = num_threads();
  set_num_threads(3);
  for (const Shape shape : {Shape{1, 3000, 4, 64}, Shape{2, 601, 3, 40}}) {
    const int64_t B = shape[0], H = shape[2], d = shape[3];
    const Tensor x = random_tensor(rng, shape, -0.1f, 0.1f);
    const Tensor state = random_tensor(rng, Shape{B, H, d, d});
    const Tensor o = nan_tensor(shape);
    Tensor log_w = random_tensor(rng, shape, -0.61f, 0.f);
    EXPECT_NO_THROW(ops::generalized_delta_rule(x, x, x, x, x, log_w, state, o, {}));
    // A row past the middle; the last channel (for d = 40 one the vector loops leave to
    // their one-lane tail) or any.
    const int64_t rows = log_w.numel() / d;
    const int64_t row = std::uniform_int_distribution<int64_t>(rows / 2, rows - 1)(rng);
    const int64_t any = std::uniform_int_distribution<int64_t>(0, d - 1)(rng);
    for (const auto& [at, bad] : {std::pair{row * d + d - 1, 0.25f},
                                 std::pair{row * d + any, std::numeric_limits<float>::quiet_NaN()}}) {
      const float kept = log_w.data<float>()[at];
      log_w.mutable_data<float>()[at] = bad;
      const std::vector<float> before(state.data<float>(), state.data<float>() + state.numel());
      try {
        ops::generalized_delta_rule(x, x, x, x, x, log_w, state, o, {});
        ADD_FAILURE() << "no error for log_w = " << bad << " at element " << at;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("generalized_delta_rule: log_w: expected values <= 0, got"),
                  std::string::npos)
            << e.what();
      }
      EXPECT_TRUE(std::equal(before.begin(), before.end(), state.data<float>())) << "state changed by a failed call";
      log_w.mutable_data<float>()[at] = kept;
    }
  }
  set_num_threads(saved);
}

}  // namespace
}  // namespace subq::test
