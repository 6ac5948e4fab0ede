// MambaMixer against the float64 Hugging Face MambaMixer definition and the mixer
// contract: reference at B > 1, T = 1 and odd T; split invariance including token by
// token; constant state; snapshot/restore. d_inner is not a multiple of any vector
// width. Weights are f32, or bf16 for the projections (the reference then uses the same
// bf16-rounded values).
#include <gtest/gtest.h>

#include <cmath>

#include "src/mixers/mamba_mixer.h"
#include "tests/mixers/contract.h"
#include "tests/reference/ssm.h"
#include "tests/support/random.h"

namespace subq {
namespace {

using test::ContractCase;
using test::random_tensor;
using test::rng_for_test;
using test::to_double;

struct Built {
  MambaConfig config;
  MambaWeights weights;
  ref::MambaRef ref;
};

Tensor to_dtype(const Tensor& t, DType dt) {
  if (dt == DType::f32) return t;
  Tensor out = Tensor::empty(dt, t.shape());
  convert(t, out);
  return out;
}

// Mamba's own initialisation ranges: A_log = log(1..N) (+ noise), dt in [1e-3, 0.1]
// through the inverse softplus of the dt bias, projections ~ 1/sqrt(fan_in).
Built build(std::mt19937_64& rng, const MambaConfig& c, DType proj_dtype) {
  Built b{c, {}, {}};
  const int64_t I = c.d_inner, N = c.d_state, R = c.dt_rank;
  auto scaled = [&](const Shape& s, double fan_in) {
    const float a = static_cast<float>(1 / std::sqrt(fan_in));
    return random_tensor(rng, s, -a, a);
  };
  MambaWeights& w = b.weights;
  w.in_proj = to_dtype(scaled({2 * I, c.d_model}, static_cast<double>(c.d_model)), proj_dtype);
  w.x_proj = to_dtype(scaled({R + 2 * N, I}, static_cast<double>(I)), proj_dtype);
  w.dt_proj = to_dtype(scaled({I, R}, static_cast<double>(R)), proj_dtype);
  w.out_proj = to_dtype(scaled({c.d_model, I}, static_cast<double>(I)), proj_dtype);
  if (c.proj_bias) {
    w.in_proj_bias = random_tensor(rng, {2 * I}, -0.5, 0.5);
    w.out_proj_bias = random_tensor(rng, {c.d_model}, -0.5, 0.5);
  }
  w.conv_weight = scaled({I, 1, c.d_conv}, static_cast<double>(c.d_conv));
  if (c.conv_bias) w.conv_bias = random_tensor(rng, {I}, -0.5, 0.5);
  w.dt_proj_bias = Tensor::empty(DType::f32, {I});
  const auto dts = test::uniform(rng, static_cast<size_t>(I), std::log(1e-3f), std::log(0.1f));
  for (int64_t i = 0; i < I; ++i) w.dt_proj_bias.mutable_data<float>()[i] = std::log(std::expm1(std::exp(dts[i])));
  w.A_log = Tensor::empty(DType::f32, {I, N});
  const auto noise = test::uniform(rng, static_cast<size_t>(I * N), -0.3f, 0.3f);
  for (int64_t i = 0; i < I * N; ++i) w.A_log.mutable_data<float>()[i] = std::log(static_cast<float>(i % N + 1)) + noise[i];
  w.D = random_tensor(rng, {I}, 0.5, 1.5);
  auto d = [](const Tensor& t) { return t.defined() ? to_double(t) : ref::Vec{}; };
  b.ref = ref::MambaRef{c.d_model, I, N, c.d_conv, R, d(w.in_proj), d(w.in_proj_bias), d(w.conv_weight),
                        d(w.conv_bias), d(w.x_proj), d(w.dt_proj), d(w.dt_proj_bias), d(w.A_log), d(w.D),
                        d(w.out_proj), d(w.out_proj_bias)};
  return b;
}

// f32 kernels over a chain of four projections, a conv and the scan: errors stay near
// 1e-5 of the O(0.1..1) outputs; tolerance leaves a factor ~5.
ContractCase contract(const MambaConfig& c, DType proj_dtype) {
  auto rng = rng_for_test();
  auto built = std::make_shared<Built>(build(rng, c, proj_dtype));
  ContractCase cc;
  cc.make = [built] { return std::make_unique<MambaMixer>(built->config, built->weights); };
  cc.reference = [built](const std::vector<double>& x, int64_t B, int64_t T) { return ref::mamba_mixer(built->ref, x, B, T); };
  cc.rtol = 1e-4;
  cc.atol = 5e-5;
  return cc;
}

// Mamba-130m's proportions shrunk: expand 2 would give 48; 38 is deliberately odd-sized.
const MambaConfig kSmall{.d_model = 24, .d_inner = 38, .d_state = 16, .d_conv = 4, .dt_rank = 3, .conv_bias = true, .proj_bias = false};
const MambaConfig kOther{.d_model = 20, .d_inner = 33, .d_state = 5, .d_conv = 3, .dt_rank = 2, .conv_bias = false, .proj_bias = true};

TEST(MambaMixer, MatchesReference) {
  for (const MambaConfig& c : {kSmall, kOther}) {
    const ContractCase cc = contract(c, DType::f32);
    test::expect_matches_reference(cc, 3, 37);
    test::expect_matches_reference(cc, 2, 1);
  }
}

TEST(MambaMixer, Bf16ProjectionsMatchReference) {
  const ContractCase cc = contract(kSmall, DType::bf16);
  test::expect_matches_reference(cc, 2, 29);
}

TEST(MambaMixer, SplitInvariant) {
  for (const MambaConfig& c : {kSmall, kOther}) test::expect_split_invariant(contract(c, DType::f32), 2, 23);
}

TEST(MambaMixer, ConstantState) {
  const ContractCase cc = contract(kSmall, DType::f32);
  test::expect_constant_state(cc, 2, 5, 40);
  auto m = cc.make();
  // conv window [B, 3, 38] + SSM state [B, 38, 16], f32.
  EXPECT_EQ(m->new_state(2)->state_bytes(), static_cast<size_t>(2 * (3 * 38 + 38 * 16) * 4));
}

TEST(MambaMixer, SnapshotRestoreRoundTrip) {
  for (const MambaConfig& c : {kSmall, kOther}) test::expect_snapshot_roundtrip(contract(c, DType::f32), 2, 9, 7);
}

TEST(MambaMixer, RejectsBadWeightsAndInputs) {
  auto rng = rng_for_test();
  const Built b = build(rng, kSmall, DType::f32);
  MambaWeights w = b.weights;
  w.x_proj = random_tensor(rng, {3 + 2 * 16 + 1, 38});
  EXPECT_THROW(MambaMixer(kSmall, w), Error);
  w = b.weights;
  w.conv_bias = Tensor();
  EXPECT_THROW(MambaMixer(kSmall, w), Error);
  w = b.weights;
  w.in_proj_bias = random_tensor(rng, {76});  // config says no projection bias
  EXPECT_THROW(MambaMixer(kSmall, w), Error);
  w = b.weights;
  w.A_log = Tensor::zeros(DType::i32, {38, 16});
  EXPECT_THROW(MambaMixer(kSmall, w), Error);
  const MambaMixer m(kSmall, b.weights);
  auto state = m.new_state(2);
  EXPECT_THROW(m.forward(random_tensor(rng, {3, 4, 24}), *state, Tensor::zeros(DType::f32, {3, 4, 24})), Error);
  EXPECT_THROW(m.forward(random_tensor(rng, {2, 4, 25}), *state, Tensor::zeros(DType::f32, {2, 4, 25})), Error);
}

}  // namespace
}  // namespace subq
