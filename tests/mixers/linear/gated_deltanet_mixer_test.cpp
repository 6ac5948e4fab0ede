// GatedDeltaNetMixer (Qwen3-Next linear attention) against the float64 naive layer
// (gated_deltanet_reference.h) through the mixer contract, with Hv = Hk and Hv = 2 Hk,
// f32 and bf16 weights, odd sizes, batch > 1.
//
// Tolerance: rtol 1e-3 / atol 1e-4. The RMSNorm per value head divides by the output's
// own RMS, which amplifies absolute errors where a head's output is tiny; inputs are
// scaled so head outputs stay well above that (x ~ U(-1, 1), projections ~ 1/sqrt(D)).
#include <gtest/gtest.h>

#include <cmath>

#include "src/mixers/gated_deltanet_mixer.h"
#include "tests/mixers/contract.h"
#include "tests/mixers/linear/gated_deltanet_reference.h"

namespace subq::test {
namespace {

using mixers::GatedDeltaNetConfig;
using mixers::GatedDeltaNetMixer;
using mixers::GatedDeltaNetWeights;

Tensor with_dtype(const Tensor& t, DType dt) {
  if (dt == DType::f32) return t;
  Tensor out = Tensor::empty(dt, t.shape());
  convert(t, out);
  return out;
}

GatedDeltaNetWeights random_weights(std::mt19937_64& rng, const GatedDeltaNetConfig& c, DType wdt) {
  const int64_t D = c.hidden_size, Hv = c.num_value_heads;
  const float s_in = 1.f / std::sqrt(static_cast<float>(D)), s_out = 1.f / std::sqrt(static_cast<float>(c.value_dim()));
  GatedDeltaNetWeights w;
  w.in_proj_qkvz = with_dtype(random_tensor(rng, Shape{2 * c.key_dim() + 2 * c.value_dim(), D}, -s_in, s_in), wdt);
  w.in_proj_ba = with_dtype(random_tensor(rng, Shape{2 * Hv, D}, -s_in, s_in), wdt);
  w.conv1d_weight = with_dtype(random_tensor(rng, Shape{c.conv_dim(), 1, c.conv_kernel}, -0.8f, 0.8f), wdt);
  w.dt_bias = random_tensor(rng, Shape{Hv}, -1.f, 1.f);
  w.A_log = random_tensor(rng, Shape{Hv}, -1.f, 1.f);
  w.norm_weight = random_tensor(rng, Shape{c.head_v_dim}, 0.5f, 1.5f);
  w.out_proj = with_dtype(random_tensor(rng, Shape{D, c.value_dim()}, -s_out, s_out), wdt);
  return w;
}

ContractCase gdn_case(const GatedDeltaNetConfig& c, DType wdt) {
  auto rng = rng_for_test();
  const GatedDeltaNetWeights w = random_weights(rng, c, wdt);
  ContractCase cc;
  cc.make = [c, w] { return std::make_unique<GatedDeltaNetMixer>(c, w); };
  cc.reference = [c, w](const std::vector<double>& x, int64_t B, int64_t T) {
    return gated_deltanet_reference(c, w, x, B, T);
  };
  cc.rtol = 1e-3;
  cc.atol = 1e-4;
  return cc;
}

GatedDeltaNetConfig grouped_config() {  // Qwen3-Next-like: twice as many value heads as key heads
  GatedDeltaNetConfig c;
  c.hidden_size = 40;
  c.num_key_heads = 2;
  c.num_value_heads = 4;
  c.head_k_dim = 32;
  c.head_v_dim = 24;
  c.conv_kernel = 4;
  c.chunk_size = 32;
  return c;
}

GatedDeltaNetConfig odd_config() {
  GatedDeltaNetConfig c;
  c.hidden_size = 29;
  c.num_key_heads = 3;
  c.num_value_heads = 3;
  c.head_k_dim = 20;
  c.head_v_dim = 33;
  c.conv_kernel = 3;
  c.chunk_size = 16;
  return c;
}

TEST(GatedDeltaNetMixer, MatchesReference) {
  const ContractCase grouped = gdn_case(grouped_config(), DType::f32);
  for (int64_t T : {1, 9, 100}) expect_matches_reference(grouped, 2, T);
  const ContractCase odd = gdn_case(odd_config(), DType::f32);
  for (int64_t T : {1, 5, 67}) expect_matches_reference(odd, 3, T);
}

TEST(GatedDeltaNetMixer, MatchesReferenceWithBf16Weights) {
  expect_matches_reference(gdn_case(grouped_config(), DType::bf16), 2, 45);
}

TEST(GatedDeltaNetMixer, SplitInvariant) {
  expect_split_invariant(gdn_case(grouped_config(), DType::f32), 2, 75);
  expect_split_invariant(gdn_case(odd_config(), DType::f32), 1, 40);
}

TEST(GatedDeltaNetMixer, ConstantState) {
  expect_constant_state(gdn_case(grouped_config(), DType::f32), 2, 5, 100);
}

TEST(GatedDeltaNetMixer, RejectsBadWeights) {
  auto rng = rng_for_test();
  const GatedDeltaNetConfig c = grouped_config();
  const GatedDeltaNetWeights w = random_weights(rng, c, DType::f32);
  GatedDeltaNetWeights bad = w;
  bad.in_proj_ba = random_tensor(rng, Shape{c.num_value_heads, c.hidden_size});
  EXPECT_THROW(GatedDeltaNetMixer(c, bad), Error);
  bad = w;
  bad.norm_weight = random_tensor(rng, Shape{c.value_dim()});
  EXPECT_THROW(GatedDeltaNetMixer(c, bad), Error);
  GatedDeltaNetConfig bc = c;
  bc.num_key_heads = 3;
  EXPECT_THROW(GatedDeltaNetMixer(bc, w), Error);
}

TEST(GatedDeltaNetMixer, SnapshotRestoreRoundTrip) { expect_snapshot_roundtrip(gdn_case(grouped_config(), DType::f32), 2, 9, 7); }

}  // namespace
}  // namespace subq::test
