// AttentionMixer against the float64 Llama attention (projections, q/k RMSNorm, NeoX
// rotary, GQA, masked softmax, output projection), through the mixer contract.
#include <gtest/gtest.h>

#include <cmath>

#include "src/mixers/attention_mixer.h"
#include "tests/mixers/contract.h"
#include "tests/reference/attention.h"

namespace subq::test {
namespace {

struct Fixture {
  AttentionConfig cfg;
  AttentionWeights w;
};

Tensor random_weight(std::mt19937_64& rng, const Shape& shape, float bound, DType dtype) {
  const Tensor f = random_tensor(rng, shape, -bound, bound);
  if (dtype == DType::f32) return f;
  Tensor t = Tensor::empty(dtype, shape);
  convert(f, t);
  return t;
}

Fixture make_fixture(std::mt19937_64& rng, int64_t D, int64_t Hq, int64_t Hkv, int64_t Dh, DType dtype,
                     const std::string& policy, bool qk_norm = false, bool bias = false, int64_t rotary_dim = -1) {
  Fixture f;
  f.cfg.d_model = D;
  f.cfg.n_heads = Hq;
  f.cfg.n_kv_heads = Hkv;
  f.cfg.head_dim = Dh;
  f.cfg.rope.theta = 500.0;  // fast rotation, so positions matter within short tests
  f.cfg.rope.rotary_dim = rotary_dim;
  f.cfg.qk_norm = qk_norm;
  f.cfg.sparse = attn::parse_selector(policy);
  // Weights ~ U(-2/sqrt(D), 2/sqrt(D)): logits of order 1, so softmax is neither flat nor one-hot.
  const float a = 2.f / std::sqrt(static_cast<float>(D));
  f.w.wq = random_weight(rng, Shape{Hq * Dh, D}, a, dtype);
  f.w.wk = random_weight(rng, Shape{Hkv * Dh, D}, a, dtype);
  f.w.wv = random_weight(rng, Shape{Hkv * Dh, D}, a, dtype);
  f.w.wo = random_weight(rng, Shape{D, Hq * Dh}, 1.f / std::sqrt(static_cast<float>(Hq * Dh)), dtype);
  if (bias) {
    f.w.bq = random_tensor(rng, Shape{Hq * Dh}, -0.2f, 0.2f);
    f.w.bk = random_tensor(rng, Shape{Hkv * Dh}, -0.2f, 0.2f);
    f.w.bv = random_tensor(rng, Shape{Hkv * Dh}, -0.2f, 0.2f);
  }
  if (qk_norm) {
    f.w.q_norm = random_tensor(rng, Shape{Dh}, 0.5f, 1.5f);
    f.w.k_norm = random_tensor(rng, Shape{Dh}, 0.5f, 1.5f);
  }
  return f;
}

// rows[n, out] = x[n, in] · W[out, in]^T + bias
std::vector<double> project(const std::vector<double>& x, int64_t n, int64_t in, const Tensor& w, const Tensor& bias) {
  const auto W = to_double(w);
  const auto b = bias.defined() ? to_double(bias) : std::vector<double>();
  const int64_t out = w.dim(0);
  std::vector<double> y(static_cast<size_t>(n * out));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double s = b.empty() ? 0.0 : b[static_cast<size_t>(o)];
      for (int64_t i = 0; i < in; ++i) s += x[static_cast<size_t>(r * in + i)] * W[static_cast<size_t>(o * in + i)];
      y[static_cast<size_t>(r * out + o)] = s;
    }
  return y;
}

// In place on rows [B*T, H, Dh]: RMSNorm per head (optional), then NeoX rotary at position t.
void norm_and_rotate(std::vector<double>& x, int64_t B, int64_t T, int64_t H, const Fixture& f, const Tensor& norm) {
  const int64_t Dh = f.cfg.head_dim;
  const int64_t rot = f.cfg.rope.rotary_dim < 0 ? Dh : f.cfg.rope.rotary_dim;
  const auto nw = norm.defined() ? to_double(norm) : std::vector<double>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double* v = &x[static_cast<size_t>(((b * T + t) * H + h) * Dh)];
        if (f.cfg.qk_norm) {
          double ms = 0;
          for (int64_t i = 0; i < Dh; ++i) ms += v[i] * v[i];
          const double inv = 1.0 / std::sqrt(ms / static_cast<double>(Dh) + f.cfg.norm_eps);
          for (int64_t i = 0; i < Dh; ++i) v[i] *= inv * nw[static_cast<size_t>(i)];
        }
        for (int64_t i = 0; i < rot / 2; ++i) {
          const double angle = static_cast<double>(t) * std::pow(f.cfg.rope.theta, -2.0 * i / rot);
          const double c = std::cos(angle), s = std::sin(angle);
          const double x0 = v[i], x1 = v[i + rot / 2];
          v[i] = x0 * c - x1 * s;
          v[i + rot / 2] = x1 * c + x0 * s;
        }
      }
}

// The float64 layer; `allowed(h, i, j)` is the policy's mask for a fresh sequence. With a
// bf16 KV cache the keys (after rotation) and values are rounded to bf16, as it stores them.
std::vector<double> reference_layer(const Fixture& f, const std::vector<double>& x, int64_t B, int64_t T) {
  const int64_t D = f.cfg.d_model, Hq = f.cfg.n_heads, Hkv = f.cfg.n_kv_heads, Dh = f.cfg.head_dim;
  auto q = project(x, B * T, D, f.w.wq, f.w.bq);
  auto k = project(x, B * T, D, f.w.wk, f.w.bk);
  auto v = project(x, B * T, D, f.w.wv, f.w.bv);
  norm_and_rotate(q, B, T, Hq, f, f.w.q_norm);
  norm_and_rotate(k, B, T, Hkv, f, f.w.k_norm);
  if (f.cfg.kv_dtype == DType::bf16)
    for (auto* kv : {&k, &v})
      for (double& e : *kv) e = to_float(to_bf16(static_cast<float>(e)));
  const attn::SelectorSpec& s = f.cfg.sparse;
  ref::PairMask allowed;
  if (s.is_dense()) {
    allowed = [](int64_t, int64_t, int64_t i, int64_t j) { return j <= i; };
  } else if (s.bounds_cache()) {
    allowed = [s](int64_t, int64_t, int64_t i, int64_t j) { return j <= i && (j < s.sinks || j > i - s.window); };
  } else {
    // Static selectors need no q/k: the mask of a whole fresh sequence, per head.
    const attn::BlockMask m = attn::build_mask(s, attn::MaskGeometry{T, T, 0, 64, 64, Hq, nullptr}, attn::AttentionArgs{});
    allowed = [m](int64_t, int64_t h, int64_t i, int64_t j) { return ref::block_mask_allows(m, 0, h, i, j); };
  }
  const auto o = ref::attention(q, k, v, B, T, T, Hq, Hkv, Dh, 1.0 / std::sqrt(static_cast<double>(Dh)), 0.0, allowed);
  return project(o, B * T, Hq * Dh, f.w.wo, Tensor());
}

ContractCase contract_for(const Fixture& f) {
  ContractCase c;
  c.make = [f] { return std::make_unique<AttentionMixer>(f.cfg, f.w); };
  c.reference = [f](const std::vector<double>& x, int64_t B, int64_t T) { return reference_layer(f, x, B, T); };
  // f32 projections over D <= 96 and f32 attention: ~1e-6 relative; weights are rounded
  // to their dtype on both sides, so bf16/f16 weights need no looser bound.
  c.rtol = 2e-4;
  c.atol = 2e-5;
  // A bf16 cache rounds K/V on both sides too, but the layer's f32 K/V differ from the
  // float64 ones (and a GEMV-projected token from a GEMM-projected one) by ~1e-6 relative:
  // the rare element that close to a rounding midpoint lands one bf16 ulp (<= 2^-7 |x|)
  // away, and a test's ~10^4 K/V elements hold a few. One such value element at attention
  // weight <= 1 moves an output by <= |wo| 2^-7 |v| <= (1 / sqrt(Hq Dh)) * 2^-7 * 2 ~ 1.4e-3
  // (|v| < 2 here); a key element by far less. 3e-3 covers two in one row and stays below
  // a dropped or misread key (~1e-2 at these T).
  if (f.cfg.kv_dtype == DType::bf16) c.atol = 3e-3;
  return c;
}

TEST(AttentionMixer, DenseGqaF32MatchesReferenceAndSplits) {
  auto rng = rng_for_test();
  const auto c = contract_for(make_fixture(rng, 48, 4, 2, 32, DType::f32, "dense"));
  for (int64_t T : {1, 17, 70}) expect_matches_reference(c, 2, T);
  expect_split_invariant(c, 2, 23);
  expect_snapshot_roundtrip(c, 2, 9, 5);
}

TEST(AttentionMixer, Bf16WeightsQkNormPartialRotaryMqaBias) {
  auto rng = rng_for_test();
  const auto c = contract_for(make_fixture(rng, 64, 4, 1, 64, DType::bf16, "dense", true, true, 32));
  expect_matches_reference(c, 1, 90);
  expect_split_invariant(c, 1, 20);
}

TEST(AttentionMixer, F16WeightsHeadDim128) {
  auto rng = rng_for_test();
  const auto c = contract_for(make_fixture(rng, 96, 2, 2, 128, DType::f16, "dense"));
  expect_matches_reference(c, 2, 33);
  expect_split_invariant(c, 1, 12);
}

// A bf16 KV cache (bf16 weights, as a bf16 checkpoint loads), head dims on and off the
// vector width: reference, split invariance, exact save/restore, and half the bytes.
TEST(AttentionMixer, Bf16CacheMatchesReferenceSplitsAndRestores) {
  auto rng = rng_for_test();
  for (int64_t Dh : {64, 40}) {
    SCOPED_TRACE("Dh=" + std::to_string(Dh));
    Fixture f = make_fixture(rng, 64, 4, 2, Dh, DType::bf16, "dense");
    f.cfg.kv_dtype = DType::bf16;
    const auto c = contract_for(f);
    for (int64_t T : {1, 17, 70}) expect_matches_reference(c, 2, T);
    expect_split_invariant(c, 2, 23);
    expect_snapshot_roundtrip(c, 2, 9, 5);

    const AttentionMixer m(f.cfg, f.w);
    auto state = m.new_state(2);
    m.forward(random_tensor(rng, Shape{2, 30, 64}), *state, nan_tensor(Shape{2, 30, 64}));
    // Per sequence and token: keys and values of 2 heads x Dh bf16, one i32 position.
    EXPECT_EQ(state->state_bytes(), static_cast<size_t>(2 * 30 * (2 * 2 * Dh * 2 + 4)));
    for (const Tensor& t : state->snapshot()) {
      if (t.ndim() == 3) {
        EXPECT_EQ(t.dtype(), DType::bf16);
      }
    }
  }
}

// A state saved with one KV cache dtype is refused by a layer with the other.
TEST(AttentionMixer, RestoreRejectsAnotherCacheDtype) {
  auto rng = rng_for_test();
  Fixture f = make_fixture(rng, 48, 4, 2, 32, DType::bf16, "dense");
  const AttentionMixer m32(f.cfg, f.w);
  f.cfg.kv_dtype = DType::bf16;
  const AttentionMixer m16(f.cfg, f.w);
  auto s32 = m32.new_state(1), s16 = m16.new_state(1);
  const Tensor x = random_tensor(rng, Shape{1, 6, 48});
  m32.forward(x, *s32, nan_tensor(Shape{1, 6, 48}));
  m16.forward(x, *s16, nan_tensor(Shape{1, 6, 48}));
  for (auto [from, to] : {std::pair{s32.get(), s16.get()}, std::pair{s16.get(), s32.get()}}) {
    try {
      to->restore(from->snapshot());
      ADD_FAILURE() << "restore accepted another KV cache dtype";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("KV cache is"), std::string::npos) << e.what();
    }
  }
  AttentionConfig bad = f.cfg;
  bad.kv_dtype = DType::f16;
  EXPECT_THROW(AttentionMixer(bad, f.w), Error);
}

// StreamingLLM policy: exact window + sinks at every split, bounded state.
TEST(AttentionMixer, WindowSinkPolicyIsExactAndBounded) {
  auto rng = rng_for_test();
  const auto c = contract_for(make_fixture(rng, 48, 4, 2, 32, DType::f32, "window:window=9,sinks=2"));
  for (int64_t T : {1, 8, 150}) expect_matches_reference(c, 2, T);
  expect_split_invariant(c, 2, 40);
  expect_constant_state(c, 2, 20, 35);
  expect_snapshot_roundtrip(c, 1, 30, 4);
  Fixture f16 = make_fixture(rng, 48, 4, 2, 32, DType::bf16, "window:window=9,sinks=2");
  f16.cfg.kv_dtype = DType::bf16;
  const auto c16 = contract_for(f16);
  for (int64_t T : {8, 150}) expect_matches_reference(c16, 2, T);
  expect_split_invariant(c16, 1, 40);
  expect_constant_state(c16, 2, 20, 35);
  expect_snapshot_roundtrip(c16, 1, 30, 4);
}

// A block-sparse prompt (BigBird, PowerAttention) equals the same mask on the float64
// layer; the continuation after it is exact over the cache.
TEST(AttentionMixer, SparsePrefillPoliciesMatchTheirMask) {
  auto rng = rng_for_test();
  for (const char* policy : {"bigbird:block=16,global=1,window_blocks=1,random=1,seed=5", "power:block=16,local=1"}) {
    const auto c = contract_for(make_fixture(rng, 48, 4, 2, 32, DType::f32, policy));
    SCOPED_TRACE(policy);
    for (int64_t T : {5, 130}) expect_matches_reference(c, 2, T);
  }
}

// Dynamic selectors read the layer's own q/k inside forward; at their most permissive
// setting (every past block kept / all mass) the prompt must equal dense attention.
TEST(AttentionMixer, DynamicPoliciesAtFullBudgetEqualDense) {
  auto rng = rng_for_test();
  for (const char* policy : {"moba:block=16,top_k=64", "hip:block=16,top_k=64", "xattention:block=16,threshold=1,stride=4",
                             "flexprefill:block=16,gamma=1"})
  for (DType kv : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(std::string(policy) + " " + dtype_name(kv) + " cache");
    Fixture f = make_fixture(rng, 48, 4, 2, 32, DType::f32, policy);
    f.cfg.kv_dtype = kv;  // selectors read the f32 keys whatever the cache holds
    ContractCase c = contract_for(f);
    Fixture dense = f;
    dense.cfg.sparse = attn::SelectorSpec{};
    c.reference = [dense](const std::vector<double>& x, int64_t B, int64_t T) { return reference_layer(dense, x, B, T); };
    expect_matches_reference(c, 2, 100);
  }
}

TEST(AttentionMixer, RejectsBadConfigAndState) {
  auto rng = rng_for_test();
  Fixture f = make_fixture(rng, 48, 4, 2, 32, DType::f32, "dense");
  AttentionConfig bad = f.cfg;
  bad.n_kv_heads = 3;
  EXPECT_THROW(AttentionMixer(bad, f.w), Error);
  bad = f.cfg;
  bad.sparse = attn::parse_selector("window:window=8,causal=0");
  EXPECT_THROW(AttentionMixer(bad, f.w), Error);
  AttentionWeights w = f.w;
  w.wo = random_tensor(rng, Shape{48, 64});
  EXPECT_THROW(AttentionMixer(f.cfg, w), Error);
  EXPECT_THROW(attn::parse_selector("nonsense"), Error);
  EXPECT_THROW(attn::parse_selector("window:widow=3"), Error);
  const AttentionMixer m(f.cfg, f.w);
  auto state = m.new_state(2);
  EXPECT_THROW(m.forward(random_tensor(rng, Shape{1, 3, 48}), *state, nan_tensor(Shape{1, 3, 48})), Error);
}

}  // namespace
}  // namespace subq::test
