// GlaMixer against the float64 naive GLA layer (gla_reference.h) through the mixer
// contract, odd sizes, batch > 1, f32 and f16 weights.
// Tolerance: rtol 1e-3 / atol 1e-4 (f32 projections over D <= 48, f32 state over
// T <= 130; the per-head RMSNorm keeps outputs of order 1).
#include <gtest/gtest.h>

#include <cmath>

#include "src/mixers/gla_mixer.h"
#include "tests/mixers/contract.h"
#include "tests/mixers/linear/gla_reference.h"

namespace subq::test {
namespace {

using mixers::GlaConfig;
using mixers::GlaMixer;
using mixers::GlaWeights;

Tensor in_dtype(const Tensor& t, DType dt) {
  if (dt == DType::f32) return t;
  Tensor out = Tensor::empty(dt, t.shape());
  convert(t, out);
  return out;
}

GlaWeights random_weights(std::mt19937_64& rng, const GlaConfig& c, DType wdt) {
  const int64_t D = c.hidden_size;
  const float s = 1.f / std::sqrt(static_cast<float>(D)), so = 1.f / std::sqrt(static_cast<float>(c.value_dim));
  GlaWeights w;
  w.q_proj = in_dtype(random_tensor(rng, Shape{c.key_dim, D}, -s, s), wdt);
  w.k_proj = in_dtype(random_tensor(rng, Shape{c.key_dim, D}, -s, s), wdt);
  w.v_proj = in_dtype(random_tensor(rng, Shape{c.value_dim, D}, -s, s), wdt);
  w.gk_proj_0 = in_dtype(random_tensor(rng, Shape{c.gate_low_rank_dim, D}, -s, s), wdt);
  w.gk_proj_1 = in_dtype(random_tensor(rng, Shape{c.key_dim, c.gate_low_rank_dim}, -1.f, 1.f), wdt);
  w.gk_bias = random_tensor(rng, Shape{c.key_dim}, -1.f, 1.f);
  w.g_proj = in_dtype(random_tensor(rng, Shape{c.value_dim, D}, -s, s), wdt);
  w.g_norm = random_tensor(rng, Shape{c.value_dim / c.num_heads}, 0.5f, 1.5f);
  w.o_proj = in_dtype(random_tensor(rng, Shape{D, c.value_dim}, -so, so), wdt);
  return w;
}

ContractCase gla_case(const GlaConfig& c, DType wdt) {
  auto rng = rng_for_test();
  const GlaWeights w = random_weights(rng, c, wdt);
  ContractCase cc;
  cc.make = [c, w] { return std::make_unique<GlaMixer>(c, w); };
  cc.reference = [c, w](const std::vector<double>& x, int64_t B, int64_t T) { return gla_reference(c, w, x, B, T); };
  cc.rtol = 1e-3;
  cc.atol = 1e-4;
  return cc;
}

GlaConfig small_config() {
  GlaConfig c;
  c.hidden_size = 48;
  c.num_heads = 2;
  c.key_dim = 64;
  c.value_dim = 96;
  c.chunk_size = 32;
  return c;
}

GlaConfig odd_config() {
  GlaConfig c;
  c.hidden_size = 31;
  c.num_heads = 3;
  c.key_dim = 3 * 17;
  c.value_dim = 3 * 33;
  c.gate_low_rank_dim = 5;
  c.chunk_size = 16;
  return c;
}

TEST(GlaMixer, MatchesReference) {
  const ContractCase small = gla_case(small_config(), DType::f32);
  for (int64_t T : {1, 7, 130}) expect_matches_reference(small, 2, T);
  const ContractCase odd = gla_case(odd_config(), DType::f32);
  for (int64_t T : {1, 5, 67}) expect_matches_reference(odd, 3, T);
  expect_matches_reference(gla_case(small_config(), DType::f16), 1, 50);
}

TEST(GlaMixer, SplitInvariant) {
  expect_split_invariant(gla_case(small_config(), DType::f32), 2, 75);
  expect_split_invariant(gla_case(odd_config(), DType::f32), 1, 40);
}

TEST(GlaMixer, ConstantState) { expect_constant_state(gla_case(small_config(), DType::f32), 2, 5, 100); }

TEST(GlaMixer, RejectsBadWeights) {
  auto rng = rng_for_test();
  const GlaConfig c = small_config();
  const GlaWeights w = random_weights(rng, c, DType::f32);
  GlaWeights bad = w;
  bad.gk_proj_1 = random_tensor(rng, Shape{c.key_dim, c.gate_low_rank_dim + 1});
  EXPECT_THROW(GlaMixer(c, bad), Error);
  GlaConfig bc = c;
  bc.num_heads = 5;
  EXPECT_THROW(GlaMixer(bc, w), Error);
}

TEST(GlaMixer, SnapshotRestoreRoundTrip) { expect_snapshot_roundtrip(gla_case(small_config(), DType::f32), 2, 9, 7); }

}  // namespace
}  // namespace subq::test
