// Split-KV decode against float64 attention, and the KV cache's window eviction.
#include <gtest/gtest.h>

#include "src/ops/attention/kv_cache.h"
#include "tests/ops/attention/attention_case.h"
#include "tests/support/targets.h"

namespace subq::test {
namespace {

attn::AttentionArgs args_for(const AttnProblem& p, const Tensor& out) {
  attn::AttentionArgs a;
  a.q = p.q.data<float>();
  a.q_batch_stride = p.Tq * p.Hq * p.Dh;
  a.q_row_stride = p.Hq * p.Dh;
  a.k = p.k.data<float>();
  a.v = p.v.data<float>();
  a.k_batch_stride = a.v_batch_stride = p.Tk * p.Hkv * p.Dh;
  a.k_row_stride = a.v_row_stride = p.Hkv * p.Dh;
  a.o = out.mutable_data<float>();
  a.o_batch_stride = a.q_batch_stride;
  a.o_row_stride = a.q_row_stride;
  a.batch = p.B;
  a.q_len = p.Tq;
  a.kv_len = p.Tk;
  a.q_heads = p.Hq;
  a.kv_heads = p.Hkv;
  a.head_dim = p.Dh;
  a.scale = static_cast<float>(p.used_scale());
  a.softcap = p.softcap;
  return a;
}

// The last Tq tokens of a Tk-token sequence, causal, for several split counts.
TEST(SplitKVDecode, MatchesReferenceForAnySplitCount) {
  auto rng = rng_for_test();
  struct Size { int64_t Tq, Tk, Hq, Hkv, Dh; };
  for (const Size s : {Size{1, 1, 2, 1, 64}, Size{1, 1000, 8, 2, 128}, Size{3, 700, 4, 4, 80}, Size{1, 333, 6, 1, 32},
                       Size{2, 129, 16, 2, 64}}) {
    for (int64_t splits : {1, 3, 7, 0}) {
      auto check = [&] {
        AttnProblem p(rng, 2, s.Tq, s.Tk, s.Hq, s.Hkv, s.Dh);
        p.softcap = splits == 3 ? 4.f : 0.f;
        Tensor out = nan_tensor(Shape{p.B, p.Tq, p.Hq, p.Dh});
        attn::ElementRule rule;
        rule.causal = true;
        const int64_t offset = s.Tk - s.Tq;
        attn::decode_attention(args_for(p, out), rule, offset, splits);
        expect_close(out, p.reference([&](int64_t, int64_t, int64_t i, int64_t j) { return j <= offset + i; }),
                     kAttnRtol, kAttnAtol, p.describe() + " splits=" + std::to_string(splits));
      };
      // Every SIMD target for one split count; the others on the best target.
      if (splits == 3) for_each_target(check);
      else check();
    }
  }
}

// Window + sinks rule over an evicted cache's positions, and splits whose key ranges
// hold no visible key at all (they must merge as nothing).
TEST(SplitKVDecode, WindowRuleOverCachePositions) {
  auto rng = rng_for_test();
  std::vector<int32_t> pos;
  for (int32_t p = 0; p < 2; ++p) pos.push_back(p);
  for (int32_t p = 500; p < 800; ++p) pos.push_back(p);
  const int64_t Tk = static_cast<int64_t>(pos.size());
  AttnProblem p(rng, 1, 1, Tk, 4, 2, 64);
  Tensor out = nan_tensor(Shape{1, 1, 4, 64});
  attn::ElementRule rule;
  rule.causal = true;
  rule.window_left = 40;
  rule.sinks = 2;
  auto a = args_for(p, out);
  a.key_positions = pos.data();
  attn::decode_attention(a, rule, 799, 5);
  expect_close(out, p.reference([&](int64_t, int64_t, int64_t, int64_t j) {
    const int64_t kp = pos[static_cast<size_t>(j)];
    return kp <= 799 && (kp < 2 || kp >= 799 - 40);
  }),
               kAttnRtol, kAttnAtol, "window over cache");
}

TEST(KVCache, UnboundedKeepsEverything) {
  auto rng = rng_for_test();
  attn::KVCache c(2, 8);
  const auto k = uniform(rng, 50 * 16), v = uniform(rng, 50 * 16);
  c.append(k.data(), v.data(), 16, 30);
  c.append(k.data() + 30 * 16, v.data() + 30 * 16, 16, 20);
  c.evict();
  ASSERT_EQ(c.slots(), 50);
  EXPECT_EQ(c.next_position(), 50);
  for (int64_t s = 0; s < 50; ++s) {
    EXPECT_EQ(c.positions()[s], s);
    EXPECT_EQ(c.keys()[s * 16 + 5], k[static_cast<size_t>(s * 16 + 5)]);
    EXPECT_EQ(c.values()[s * 16 + 15], v[static_cast<size_t>(s * 16 + 15)]);
  }
  EXPECT_GE(c.bytes(), 50u * 2 * 16 * 4);
}

// Window 10, sinks 3: after any sequence of chunks the cache holds positions 0..2 and
// the last 9, with their own rows, and its size stays at the bound.
TEST(KVCache, WindowEvictionKeepsSinksAndRecentKeys) {
  auto rng = rng_for_test();
  attn::KVCache c(1, 4, 10, 3);
  const size_t bound = c.bytes();
  EXPECT_GT(bound, 0u);
  const auto k = uniform(rng, 200 * 4), v = uniform(rng, 200 * 4);
  int64_t seen = 0;
  for (int64_t chunk : {1, 2, 25, 1, 1, 40, 7}) {
    c.append(k.data() + seen * 4, v.data() + seen * 4, 4, chunk);
    seen += chunk;
    c.evict();
    std::vector<int32_t> want;
    for (int32_t p = 0; p < seen; ++p)
      if (p < 3 || p >= seen - 9) want.push_back(p);
    ASSERT_EQ(c.slots(), static_cast<int64_t>(want.size())) << "after " << seen;
    for (size_t s = 0; s < want.size(); ++s) {
      EXPECT_EQ(c.positions()[s], want[s]);
      EXPECT_EQ(c.keys()[s * 4 + 3], k[static_cast<size_t>(want[s]) * 4 + 3]);
      EXPECT_EQ(c.values()[s * 4], v[static_cast<size_t>(want[s]) * 4]);
    }
    EXPECT_EQ(c.bytes(), bound) << "after " << seen;
  }
}

}  // namespace
}  // namespace subq::test
