// Mamba2Mixer against the float64 naive Mamba-2 layer (mamba2_reference.h) through the
// mixer contract (reference, split invariance incl. token by token, constant state),
// with f32 and bf16 weights, biases on and off, groups 1..H, odd sizes, batch > 1.
//
// Tolerance: rtol 1e-3 / atol 1e-4 on outputs of order 1: f32 projections over D <= 96
// and the SSD over T <= 130 tokens; bf16 weights are widened exactly, so the reference
// sees the same (rounded) values and the tolerance does not change.
#include <gtest/gtest.h>

#include <cmath>

#include "src/mixers/mamba2_mixer.h"
#include "tests/mixers/contract.h"
#include "tests/mixers/linear/mamba2_reference.h"

namespace subq::test {
namespace {

using mixers::Mamba2Config;
using mixers::Mamba2Mixer;
using mixers::Mamba2Weights;

Tensor as_dtype(const Tensor& t, DType dt) {
  if (!t.defined() || dt == DType::f32) return t;
  Tensor out = Tensor::empty(dt, t.shape());
  convert(t, out);
  return out;
}

Mamba2Weights random_weights(std::mt19937_64& rng, const Mamba2Config& c, bool biases, DType wdt) {
  const int64_t D = c.hidden_size, I = c.intermediate_size(), H = c.num_heads;
  const float s_in = 1.f / std::sqrt(static_cast<float>(D)), s_out = 1.f / std::sqrt(static_cast<float>(I));
  Mamba2Weights w;
  w.in_proj_weight = as_dtype(random_tensor(rng, Shape{c.in_proj_size(), D}, -s_in, s_in), wdt);
  w.out_proj_weight = as_dtype(random_tensor(rng, Shape{D, I}, -s_out, s_out), wdt);
  w.conv1d_weight = as_dtype(random_tensor(rng, Shape{c.conv_dim(), 1, c.conv_kernel}, -0.5f, 0.5f), wdt);
  w.conv1d_bias = random_tensor(rng, Shape{c.conv_dim()}, -0.2f, 0.2f);
  w.dt_bias = random_tensor(rng, Shape{H}, -4.f, -1.f);  // softplus -> dt in about [0.02, 0.3]
  w.A_log = random_tensor(rng, Shape{H}, 0.f, 2.7f);      // A in [-16, -1]
  w.D = random_tensor(rng, Shape{H}, 0.5f, 1.5f);
  w.norm_weight = random_tensor(rng, Shape{I}, 0.5f, 1.5f);
  if (biases) {
    w.in_proj_bias = random_tensor(rng, Shape{c.in_proj_size()}, -0.1f, 0.1f);
    w.out_proj_bias = random_tensor(rng, Shape{D}, -0.1f, 0.1f);
  }
  return w;
}

ContractCase mamba2_case(const Mamba2Config& c, bool biases, DType wdt) {
  auto rng = rng_for_test();
  const Mamba2Weights w = random_weights(rng, c, biases, wdt);
  const Mamba2RefWeights rw = mamba2_ref_weights(w);
  ContractCase cc;
  cc.make = [c, w] { return std::make_unique<Mamba2Mixer>(c, w); };
  cc.reference = [c, rw](const std::vector<double>& x, int64_t B, int64_t T) { return mamba2_reference(c, rw, x, B, T); };
  cc.rtol = 1e-3;
  cc.atol = 1e-4;
  return cc;
}

Mamba2Config small_config() {
  Mamba2Config c;
  c.hidden_size = 48;
  c.num_heads = 4;
  c.head_dim = 32;
  c.n_groups = 2;
  c.state_size = 16;
  c.conv_kernel = 4;
  c.chunk_size = 32;
  return c;
}

Mamba2Config odd_config() {
  Mamba2Config c;
  c.hidden_size = 37;
  c.num_heads = 3;
  c.head_dim = 20;
  c.n_groups = 3;
  c.state_size = 24;
  c.conv_kernel = 3;
  c.time_step_limit_min = 0.05f;  // clamps some of the dts
  c.time_step_limit_max = 0.2f;
  c.chunk_size = 16;
  return c;
}

TEST(Mamba2Mixer, MatchesReference) {
  const ContractCase cc = mamba2_case(small_config(), true, DType::f32);
  for (int64_t T : {1, 7, 130}) expect_matches_reference(cc, 2, T);
  const ContractCase odd = mamba2_case(odd_config(), false, DType::f32);
  for (int64_t T : {1, 5, 67}) expect_matches_reference(odd, 3, T);
}

TEST(Mamba2Mixer, MatchesReferenceWithBf16AndF16Weights) {
  expect_matches_reference(mamba2_case(small_config(), false, DType::bf16), 2, 45);
  expect_matches_reference(mamba2_case(odd_config(), true, DType::f16), 1, 33);
}

TEST(Mamba2Mixer, SplitInvariant) {
  expect_split_invariant(mamba2_case(small_config(), true, DType::f32), 2, 75);
  expect_split_invariant(mamba2_case(odd_config(), false, DType::f32), 1, 40);
}

TEST(Mamba2Mixer, ConstantState) {
  expect_constant_state(mamba2_case(small_config(), true, DType::f32), 2, 5, 100);
}

TEST(Mamba2Mixer, RejectsBadWeightsAndInputs) {
  auto rng = rng_for_test();
  const Mamba2Config c = small_config();
  Mamba2Weights w = random_weights(rng, c, false, DType::f32);
  Mamba2Weights bad = w;
  bad.in_proj_weight = random_tensor(rng, Shape{c.in_proj_size() - 1, c.hidden_size});
  EXPECT_THROW(Mamba2Mixer(c, bad), Error);
  bad = w;
  bad.D = Tensor();
  EXPECT_THROW(Mamba2Mixer(c, bad), Error);
  Mamba2Config bc = c;
  bc.n_groups = 3;
  EXPECT_THROW(Mamba2Mixer(bc, w), Error);
  const Mamba2Mixer m(c, w);
  auto st = m.new_state(2);
  EXPECT_THROW(m.forward(random_tensor(rng, Shape{1, 3, c.hidden_size}), *st, nan_tensor(Shape{1, 3, c.hidden_size})),
               Error);
}

TEST(Mamba2Mixer, SnapshotRestoreRoundTrip) { expect_snapshot_roundtrip(mamba2_case(small_config(), true, DType::f32), 2, 9, 7); }

}  // namespace
}  // namespace subq::test
