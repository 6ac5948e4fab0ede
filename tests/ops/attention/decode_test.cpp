// Split-KV decode against float64 attention (f32 and bf16 K/V), and the KV cache: window
// eviction, bf16 rounding, restore.
#include <gtest/gtest.h>

#include <cstring>

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
  a.k = p.k.raw_data();
  a.v = p.v.raw_data();
  a.kv_dtype = p.k.dtype();
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

// The last Tq tokens of a Tk-token sequence, causal, for several split counts; one size
// has more rows per KV head (12 x 3) than a work item takes (32), one eight KV heads of
// 128 (key blocks of 16 slots for f32, 32 for bf16, not 64), and head dims 72 and 80 are
// not whole pairs of AVX2 / AVX-512 vectors (rows widened and padded).
TEST(SplitKVDecode, MatchesReferenceForAnySplitCount) {
  auto rng = rng_for_test();
  struct Size { int64_t Tq, Tk, Hq, Hkv, Dh; };
  for (const Size s : {Size{1, 1, 2, 1, 64}, Size{1, 1000, 8, 2, 128}, Size{3, 700, 4, 4, 80}, Size{1, 333, 6, 1, 32},
                       Size{2, 129, 16, 2, 64}, Size{3, 200, 24, 2, 64}, Size{1, 301, 24, 8, 128},
                       Size{2, 150, 6, 2, 72}}) {
    for (int64_t splits : {1, 3, 7, 0}) {
      auto check = [&](DType kv) {
        AttnProblem p(rng, 2, s.Tq, s.Tk, s.Hq, s.Hkv, s.Dh, kv);
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
      for (DType kv : {DType::f32, DType::bf16}) {
        if (splits == 3) for_each_target([&] { check(kv); });
        else check(kv);
      }
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
  AttnProblem p(rng, 1, 1, Tk, 4, 2, 64, DType::bf16);
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
    EXPECT_EQ(static_cast<const float*>(c.keys())[s * 16 + 5], k[static_cast<size_t>(s * 16 + 5)]);
    EXPECT_EQ(static_cast<const float*>(c.values())[s * 16 + 15], v[static_cast<size_t>(s * 16 + 15)]);
  }
  EXPECT_GE(c.bytes(), 50u * 2 * 16 * 4);
}

// Reserved room is used in place: appends up to it keep the storage (no regrowth copies)
// and the rows already held; a window cache ignores the hint and keeps its bound.
TEST(KVCache, ReserveTokensAvoidsRegrowth) {
  auto rng = rng_for_test();
  attn::KVCache c(2, 8);
  const auto k = uniform(rng, 70 * 16), v = uniform(rng, 70 * 16);
  c.append(k.data(), v.data(), 16, 3);
  c.reserve_tokens(70);
  const void* keys = c.keys();
  for (int64_t t = 3; t < 70; t += 9) c.append(k.data() + t * 16, v.data() + t * 16, 16, std::min<int64_t>(9, 70 - t));
  EXPECT_EQ(c.keys(), keys);
  ASSERT_EQ(c.slots(), 70);
  for (int64_t s = 0; s < 70; ++s) {
    EXPECT_EQ(c.positions()[s], s);
    EXPECT_EQ(static_cast<const float*>(c.keys())[s * 16 + 7], k[static_cast<size_t>(s * 16 + 7)]);
    EXPECT_EQ(static_cast<const float*>(c.values())[s * 16 + 9], v[static_cast<size_t>(s * 16 + 9)]);
  }
  // One token at a time past the reservation, as a decode loop feeds them: the storage
  // moves a logarithmic number of times, not on every token.
  int moves = 0;
  for (int64_t t = 0; t < 300; ++t) {
    c.reserve_tokens(c.slots() + 1);
    c.append(k.data(), v.data(), 16, 1);
    if (c.keys() != keys) ++moves;
    keys = c.keys();
  }
  EXPECT_LE(moves, 3);
  EXPECT_EQ(static_cast<const float*>(c.keys())[69 * 16 + 7], k[69 * 16 + 7]);
  attn::KVCache w(1, 4, 10, 3);
  const size_t bound = w.bytes();
  w.reserve_tokens(1000);
  EXPECT_EQ(w.bytes(), bound);
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
      EXPECT_EQ(static_cast<const float*>(c.keys())[s * 4 + 3], k[static_cast<size_t>(want[s]) * 4 + 3]);
      EXPECT_EQ(static_cast<const float*>(c.values())[s * 4], v[static_cast<size_t>(want[s]) * 4]);
    }
    EXPECT_EQ(c.bytes(), bound) << "after " << seen;
  }
}

// bf16 round to nearest even, ties to even, written out on the bits.
uint16_t bf16_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t rest = b & 0xFFFFu, hi = b >> 16;
  return static_cast<uint16_t>(rest > 0x8000u || (rest == 0x8000u && (hi & 1u)) ? hi + 1 : hi);
}

// A window cache in bf16 keeps the same slots as in f32, each row rounded to nearest even
// (ties included), and holds half the key/value bytes.
TEST(KVCache, Bf16RoundsOnAppendAndEvictsLikeF32) {
  auto rng = rng_for_test();
  const int64_t row = 2 * 8;
  attn::KVCache c32(2, 8, 12, 2), c16(2, 8, 12, 2, DType::bf16);
  EXPECT_EQ(c16.dtype(), DType::bf16);
  EXPECT_EQ(c16.bytes(), static_cast<size_t>(14 * (2 * row * 2 + 4)));
  EXPECT_EQ(c32.bytes(), static_cast<size_t>(14 * (2 * row * 4 + 4)));
  auto k = uniform(rng, 120 * row), v = uniform(rng, 120 * row);
  // Exact ties: 1 + 2^-8 rounds down to 1 (even), 1 + 3 * 2^-8 up to 1 + 2^-6.
  k[3] = 1.00390625f;
  k[4] = 1.01171875f;
  v[5] = -1.00390625f;
  int64_t seen = 0;
  for (int64_t chunk : {5, 1, 30, 1, 17, 66}) {
    for (attn::KVCache* c : {&c32, &c16}) {
      c->append(k.data() + seen * row, v.data() + seen * row, row, chunk);
      c->evict();
    }
    seen += chunk;
    ASSERT_EQ(c16.slots(), c32.slots());
    ASSERT_EQ(c16.next_position(), seen);
    const auto* k16 = static_cast<const uint16_t*>(c16.keys());
    const auto* v16 = static_cast<const uint16_t*>(c16.values());
    const auto* k32 = static_cast<const float*>(c32.keys());
    const auto* v32 = static_cast<const float*>(c32.values());
    for (int64_t s = 0; s < c16.slots(); ++s) {
      ASSERT_EQ(c16.positions()[s], c32.positions()[s]);
      for (int64_t x = 0; x < row; ++x) {
        ASSERT_EQ(k16[s * row + x], bf16_bits(k32[s * row + x])) << "slot " << s << " element " << x;
        ASSERT_EQ(v16[s * row + x], bf16_bits(v32[s * row + x])) << "slot " << s << " element " << x;
      }
    }
  }
  EXPECT_EQ(bf16_bits(k[3]), 0x3F80u);
  EXPECT_EQ(bf16_bits(k[4]), 0x3F82u);
}

// A prompt's rows are appended on the pool when they are many and wide: every row lands
// in its slot with its position, in f32 as given and in bf16 rounded to nearest even.
TEST(KVCache, LongChunksFillEveryRowOnThePool) {
  auto rng = rng_for_test();
  const int64_t row = 8 * 64, tokens = 333;
  const auto k = uniform(rng, static_cast<size_t>(tokens * row)), v = uniform(rng, static_cast<size_t>(tokens * row));
  for (const DType dtype : {DType::f32, DType::bf16}) {
    attn::KVCache c(8, 64, 0, 0, dtype);
    c.append(k.data(), v.data(), row, 5);
    c.append(k.data() + 5 * row, v.data() + 5 * row, row, tokens - 5);
    ASSERT_EQ(c.slots(), tokens);
    int64_t bad = 0;
    for (int64_t s = 0; s < tokens; ++s) {
      bad += c.positions()[s] != s;
      for (int64_t x = 0; x < row; ++x) {
        const size_t i = static_cast<size_t>(s * row + x);
        if (dtype == DType::f32) {
          bad += static_cast<const float*>(c.keys())[i] != k[i] || static_cast<const float*>(c.values())[i] != v[i];
        } else {
          bad += static_cast<const uint16_t*>(c.keys())[i] != bf16_bits(k[i]) ||
                 static_cast<const uint16_t*>(c.values())[i] != bf16_bits(v[i]);
        }
      }
    }
    EXPECT_EQ(bad, 0) << dtype_name(dtype);
  }
}

// assign() restores bf16 rows bit for bit and keeps the bound; unbounded bf16 caches
// report the bytes they hold.
TEST(KVCache, Bf16AssignRestoresRows) {
  auto rng = rng_for_test();
  const int64_t row = 3 * 4;
  attn::KVCache a(3, 4, 0, 0, DType::bf16);
  const auto k = uniform(rng, 40 * row), v = uniform(rng, 40 * row);
  a.append(k.data(), v.data(), row, 40);
  EXPECT_EQ(a.bytes(), static_cast<size_t>(40 * (2 * row * 2 + 4)));
  attn::KVCache b(3, 4, 0, 0, DType::bf16);
  b.assign(a.keys(), a.values(), a.positions(), a.slots(), a.next_position());
  ASSERT_EQ(b.slots(), 40);
  EXPECT_EQ(b.next_position(), 40);
  EXPECT_EQ(b.bytes(), a.bytes());
  EXPECT_EQ(std::memcmp(b.keys(), a.keys(), 40 * row * 2), 0);
  EXPECT_EQ(std::memcmp(b.values(), a.values(), 40 * row * 2), 0);
  attn::KVCache w(3, 4, 8, 1, DType::bf16);
  EXPECT_THROW(w.assign(a.keys(), a.values(), a.positions(), 40, 40), Error);  // more than the window keeps
  EXPECT_THROW(attn::KVCache(3, 4, 0, 0, DType::f16), Error);
}

}  // namespace
}  // namespace subq::test
