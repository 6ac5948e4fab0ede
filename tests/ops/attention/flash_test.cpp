#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "src/ops/common/gemm_kernels.h"
#include "subq/ops.h"
#include "tests/ops/attention/attention_case.h"
#include "tests/support/targets.h"

namespace subq::test {
namespace {

using attn::BlockMask;
using attn::BlockMaskBuilder;
using attn::ElementRule;

auto causal_pairs(int64_t q_offset) {
  return [q_offset](int64_t, int64_t, int64_t i, int64_t j) { return j <= q_offset + i; };
}
bool all_pairs(int64_t, int64_t, int64_t, int64_t) { return true; }

// A mask whose rows list a random half of the key blocks (per batch and head).
BlockMask random_block_mask(std::mt19937_64& rng, int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t qb, int64_t kb,
                            const ElementRule& rule, double keep = 0.5) {
  BlockMaskBuilder b(B, H, Tq, Tk, qb, kb, 0, rule);
  std::bernoulli_distribution coin(keep);
  const int64_t nqb = (Tq + qb - 1) / qb, nkb = (Tk + kb - 1) / kb;
  std::vector<int32_t> row;
  for (int64_t r = 0; r < B * H * nqb; ++r) {
    row.clear();
    for (int64_t j = nkb - 1; j >= 0; --j)  // descending: the builder must sort
      if (coin(rng)) row.push_back(static_cast<int32_t>(j));
    b.add_row(row);
  }
  return b.finish();
}

constexpr DType kKVTypes[] = {DType::f32, DType::bf16};

TEST(FlashAttention, DenseCausalAndFullOverSizes) {
  for_each_target([&] {
    auto rng = rng_for_test();
    struct Size { int64_t T, Dh, Hq, Hkv; };
    for (const Size s : {Size{1, 64, 2, 2}, Size{17, 32, 4, 1}, Size{100, 80, 4, 4}, Size{100, 128, 8, 2},
                         Size{61, 256, 2, 1}, Size{33, 72, 3, 3}, Size{23, 34, 2, 1},
                         Size{39, 64, 4, 1}}) {
      for (bool causal : {true, false}) {
        const DType kv = kKVTypes[causal];  // each size with both K/V dtypes
        AttnProblem p(rng, 2, s.T, s.T, s.Hq, s.Hkv, s.Dh, kv);
        const BlockMask mask = attn::dense_mask(s.T, s.T, causal, 0, 16, 32);
        const auto want = causal ? p.reference(causal_pairs(0)) : p.reference(all_pairs);
        expect_close(p.run(mask), want, kAttnRtol, kAttnAtol, p.describe() + (causal ? " causal" : " full"));
      }
    }
  });
}

// T ~ 1000 with the default 64-blocks (1000 = 15 * 64 + 40): the long-row path.
TEST(FlashAttention, DenseCausalLong) {
  auto rng = rng_for_test();
  for (int64_t Dh : {64, 128}) {
    AttnProblem p(rng, 1, 1000, 1000, 2, 1, Dh, Dh == 64 ? DType::f32 : DType::bf16);
    expect_close(p.run(attn::dense_mask(1000, 1000, true)), p.reference(causal_pairs(0)), kAttnRtol, kAttnAtol,
                 p.describe());
    // The long-context dense prefill shape: 256-query blocks over 64-key blocks.
    expect_close(p.run(attn::dense_mask(1000, 1000, true, 0, 256, 64)), p.reference(causal_pairs(0)), kAttnRtol,
                 kAttnAtol, p.describe() + " 256-query blocks");
  }
  EXPECT_EQ(attn::dense_query_block(1024, 128), 64);
  EXPECT_EQ(attn::dense_query_block(2048, 128), 256);
}

TEST(FlashAttention, ScaleAndSoftcap) {
  for_each_target([&] {
    auto rng = rng_for_test();
    AttnProblem p(rng, 1, 50, 50, 4, 2, 64);
    p.scale = 0.7f;   // large logits, so the cap matters
    p.softcap = 2.5f;
    expect_close(p.run(attn::dense_mask(50, 50, true, 0, 16, 16)), p.reference(causal_pairs(0)), kAttnRtol, kAttnAtol,
                 "softcap");
  });
}

// Chunked prefill: queries at positions 63.. against a cache of 100 keys.
TEST(FlashAttention, QueryOffsetAgainstCache) {
  auto rng = rng_for_test();
  for (int64_t Tq : {1, 7, 37}) {
    const int64_t offset = 100 - Tq;
    AttnProblem p(rng, 2, Tq, 100, 4, 2, 32);
    const BlockMask mask = attn::dense_mask(Tq, 100, true, offset, 16, 32);
    expect_close(p.run(mask), p.reference(causal_pairs(offset)), kAttnRtol, kAttnAtol, p.describe());
  }
}

TEST(FlashAttention, SlidingWindowWithSinksRule) {
  for_each_target([&] {
    auto rng = rng_for_test();
    ElementRule rule;
    rule.causal = true;
    rule.window_left = 9;
    rule.sinks = 3;
    AttnProblem p(rng, 1, 90, 90, 2, 1, 32);
    BlockMask mask = attn::dense_mask(90, 90, true, 0, 16, 16);
    mask.rule = rule;
    expect_close(p.run(mask), p.reference([](int64_t, int64_t, int64_t i, int64_t j) {
      return j <= i && (j < 3 || j >= i - 9);
    }),
                 kAttnRtol, kAttnAtol, "window 10 + 3 sinks");
  });
}

// Evicted cache: key slots carry positions with a gap (sinks 0..3, then 40..79).
TEST(FlashAttention, KeyPositionsFromAnEvictedCache) {
  for (DType kv : kKVTypes) {
    auto rng = rng_for_test();
    std::vector<int32_t> pos;
    for (int32_t j = 0; j < 4; ++j) pos.push_back(j);
    for (int32_t j = 40; j < 80; ++j) pos.push_back(j);
    const int64_t Tk = static_cast<int64_t>(pos.size()), Tq = 10;
    AttnProblem p(rng, 1, Tq, Tk, 2, 2, 64, kv);
    ElementRule rule;
    rule.causal = true;
    rule.window_left = 15;
    rule.sinks = 4;
    BlockMask mask = attn::dense_mask(Tq, Tk, true, 70, 8, 16, pos.data());
    mask.rule = rule;
    Tensor out = nan_tensor(Shape{1, Tq, 2, 64});
    attn::AttentionArgs a;
    a.q = p.q.data<float>();
    a.q_row_stride = 2 * 64;
    a.k = p.k.raw_data();
    a.v = p.v.raw_data();
    a.kv_dtype = kv;
    a.k_row_stride = a.v_row_stride = 2 * 64;
    a.o = out.mutable_data<float>();
    a.o_row_stride = 2 * 64;
    a.q_len = Tq;
    a.kv_len = Tk;
    a.q_heads = a.kv_heads = 2;
    a.head_dim = 64;
    a.scale = 0.125f;
    a.key_positions = pos.data();
    attn::flash_attention(a, mask);
    expect_close(out, p.reference([&](int64_t, int64_t, int64_t i, int64_t j) {
      const int64_t qp = 70 + i, kp = pos[static_cast<size_t>(j)];
      return kp <= qp && (kp < 4 || kp >= qp - 15);
    }),
                 kAttnRtol, kAttnAtol, p.describe() + " evicted cache");
  }
}

// Per-(batch, head) random block masks, GQA ratios 1, 4 and H (MQA), block sizes that do
// not divide T; rows with no listed block must come out as 0.
TEST(FlashAttention, RandomBlockMasksPerHead) {
  for_each_target([&] {
    auto rng = rng_for_test();
    for (int64_t Hkv : {8, 2, 1}) {
      for (bool causal : {false, true}) {
        AttnProblem p(rng, 2, 100, 130, 8, Hkv, 48, kKVTypes[Hkv == 2]);
        ElementRule rule;
        rule.causal = causal;
        const BlockMask mask = random_block_mask(rng, 2, 8, 100, 130, 24, 20, rule);
        expect_close(p.run(mask), p.reference(mask), kAttnRtol, kAttnAtol, p.describe());
      }
    }
  });
}

// MatmulPrecision::bf16 over a bf16 cache: Q·K^T and P·V on AMX tiles with q and P
// rounded to bf16. A score moves by ~2^-9 |q||k| (~0.04 here) through q's rounding and
// each weight by up to 2^-9 relative through P's, so outputs of size ~0.3 stay within ~1e-2
// of the float64 attention; a packing or indexing error is of the size of the output. The
// exact path must still give its own, far tighter answer (the switch is really taken).
TEST(FlashAttention, Bf16PrecisionRunsOnAmxTiles) {
  if (!ops::amx_available()) GTEST_SKIP() << "no AMX-BF16 on this CPU, or the OS refused this process the tile state";
  auto rng = rng_for_test();
  struct Case { int64_t T, Dh, Hq, Hkv, q_block, k_block; bool causal; };
  for (const Case c : {Case{1, 64, 2, 2, 64, 64, true}, Case{17, 64, 4, 1, 64, 64, true},
                       Case{100, 128, 8, 2, 64, 64, false}, Case{1000, 64, 2, 1, 256, 64, true},
                       Case{300, 128, 4, 4, 64, 128, true}, Case{130, 96, 2, 1, 64, 48, false}}) {
    AttnProblem p(rng, 2, c.T, c.T, c.Hq, c.Hkv, c.Dh, DType::bf16);
    const BlockMask mask = attn::dense_mask(c.T, c.T, c.causal, 0, c.q_block, c.k_block);
    const auto want = p.reference(mask);
    set_matmul_precision(MatmulPrecision::bf16);
    const Tensor got = p.run(mask);
    set_matmul_precision(MatmulPrecision::exact);
    const Tensor exact = p.run(mask);
    const std::string what = p.describe() + " q_block=" + std::to_string(c.q_block) + (c.causal ? " causal" : " full");
    expect_close(got, want, 2e-2, 1e-2, what + ", bf16 precision");
    expect_close(exact, want, kAttnRtol, kAttnAtol, what + ", exact precision");
    const auto g = to_double(got), e = to_double(exact);
    double moved = 0;
    for (size_t i = 0; i < g.size(); ++i) moved = std::max(moved, std::abs(g[i] - e[i]));
    // One key: its weight is exactly 1 either way, and the output is v itself.
    if (c.T > 1) {
      EXPECT_GT(moved, 10 * kAttnAtol) << what << ": bf16 precision gave the exact result";
    }
  }
  // A sparse mask with a window rule: edge blocks masked element by element.
  AttnProblem p(rng, 1, 333, 333, 4, 2, 64, DType::bf16);
  ElementRule rule;
  rule.causal = true;
  rule.window_left = 70;
  const BlockMask mask = random_block_mask(rng, 1, 4, 333, 333, 64, 64, rule, 0.7);
  set_matmul_precision(MatmulPrecision::bf16);
  const Tensor got = p.run(mask);
  set_matmul_precision(MatmulPrecision::exact);
  expect_close(got, p.reference(mask), 2e-2, 1e-2, p.describe() + " window rule, bf16 precision");
}

// Each thread keeps its tile, and the key blocks it prepared, from call to call. A call
// whose K and V sit where the last call's did (the next layer's, or the same buffer
// rewritten) must not read the last call's prepared blocks: five 16-key blocks fit the
// tile's slots, so one thread would find every one of them.
TEST(FlashAttention, KeysRewrittenInPlaceBetweenCalls) {
  auto rng = rng_for_test();
  const int saved = num_threads();
  for (const int threads : {1, saved}) {
    set_num_threads(threads);
    for (DType kv : kKVTypes) {
      AttnProblem p(rng, 1, 70, 70, 2, 1, 32, kv);
      ElementRule rule;
      rule.causal = true;
      rule.window_left = 20;
      BlockMask mask = attn::dense_mask(70, 70, true, 0, 16, 16);
      mask.rule = rule;
      const auto first = p.reference(mask);
      expect_close(p.run(mask), first, kAttnRtol, kAttnAtol, p.describe() + " first call");
      const AttnProblem fresh(rng, 1, 70, 70, 2, 1, 32, kv);
      std::copy_n(static_cast<const std::byte*>(fresh.k.raw_data()), p.k.nbytes(),
                  static_cast<std::byte*>(p.k.mutable_raw_data()));
      std::copy_n(static_cast<const std::byte*>(fresh.v.raw_data()), p.v.nbytes(),
                  static_cast<std::byte*>(p.v.mutable_raw_data()));
      expect_close(p.run(mask), p.reference(mask), kAttnRtol, kAttnAtol,
                   p.describe() + " threads " + std::to_string(threads) + ", keys rewritten in place");
    }
  }
  set_num_threads(saved);
}

// Unlisted key blocks hold NaN in K and V: any visit would poison the output.
TEST(FlashAttention, NeverVisitsUnlistedBlocks) {
  for (DType kv : kKVTypes) {
    auto rng = rng_for_test();
    const int64_t T = 160, kb = 32;
    AttnProblem p(rng, 1, T, T, 4, 2, 64, kv);
    // Rows list random blocks, except one randomly chosen block that no row lists.
    const int64_t nkb = T / kb;
    const int32_t never = static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, nkb - 1)(rng));
    BlockMaskBuilder builder(1, 1, T, T, 32, kb, 0, ElementRule{});
    std::bernoulli_distribution coin(0.5);
    std::vector<int32_t> row;
    for (int64_t qb = 0; qb < T / 32; ++qb) {
      row.clear();
      for (int32_t j = 0; j < nkb; ++j)
        if (j != never && coin(rng)) row.push_back(j);
      builder.add_row(row);
    }
    const BlockMask mask = builder.finish();
    std::vector<bool> listed(static_cast<size_t>(nkb), false);
    for (int32_t b : mask.key_blocks) listed[static_cast<size_t>(b)] = true;
    const auto want = p.reference(mask);  // computed before the poisoning
    const float nan = std::numeric_limits<float>::quiet_NaN();
    int64_t poisoned = 0;
    for (int64_t j = 0; j < T; ++j) {
      if (listed[static_cast<size_t>(j / kb)]) continue;
      ++poisoned;
      for (Tensor* t : {&p.k, &p.v}) {
        if (kv == DType::f32) std::fill_n(t->mutable_data<float>() + j * 2 * 64, 2 * 64, nan);
        else std::fill_n(t->mutable_data<bf16>() + j * 2 * 64, 2 * 64, to_bf16(nan));
      }
    }
    ASSERT_GE(poisoned, kb);
    expect_close(p.run(mask), want, kAttnRtol, kAttnAtol, p.describe() + " poisoned unlisted blocks");
  }
}

TEST(FlashAttention, RejectsBadArguments) {
  auto rng = rng_for_test();
  AttnProblem p(rng, 1, 10, 10, 4, 2, 32);
  const BlockMask mask = attn::dense_mask(10, 12, true);
  EXPECT_THROW(p.run(mask), Error);  // kv_len mismatch
  AttnProblem bad(rng, 1, 10, 10, 3, 2, 32);
  EXPECT_THROW(bad.run(attn::dense_mask(10, 10, true)), Error);  // 3 heads over 2 kv heads
  Tensor out = nan_tensor(Shape{1, 10, 4, 16});
  EXPECT_THROW(attn::flash_attention(p.q, p.k, p.v, attn::dense_mask(10, 10, true), {}, out), Error);
  out = nan_tensor(Shape{1, 10, 4, 32});
  const Tensor k16 = AttnProblem::converted(p.k, DType::bf16), k_f16 = AttnProblem::converted(p.k, DType::f16);
  EXPECT_THROW(attn::flash_attention(p.q, k16, p.v, attn::dense_mask(10, 10, true), {}, out), Error);  // mixed K/V
  EXPECT_THROW(attn::flash_attention(p.q, k_f16, AttnProblem::converted(p.v, DType::f16), attn::dense_mask(10, 10, true),
                                     {}, out),
               Error);  // f16 K/V
  attn::AttentionArgs a;
  a.kv_dtype = DType::bf16;
  EXPECT_THROW(a.f32_keys("selector"), Error);
}

// The executor masks by key_ranges() where the rule has that form; it must say exactly
// what allows() says element by element, over every query and key position.
TEST(ElementRule, KeyRangesAgreeWithAllows) {
  const int64_t T = 150;
  std::vector<ElementRule> rules(8);
  rules[0].causal = true;
  rules[1].window_left = 20;
  rules[1].window_right = 7;
  rules[2].causal = true;
  rules[2].window_left = 33;
  rules[2].sinks = 4;
  rules[3].window_left = 0;
  rules[3].sinks = 200;
  for (int i = 4; i < 8; ++i) {
    ElementRule& r = rules[static_cast<size_t>(i)];
    r.neighborhood = true;
    r.nbhd.grid[0] = T;
    r.nbhd.kernel[0] = i == 7 ? 31 : 17;
    r.nbhd.stride[0] = i == 6 ? 4 : 1;
    r.nbhd.causal[0] = i == 5;  // causal through the neighborhood alone
  }
  rules[7].nbhd.dilation[0] = 3;  // dilated: not a range, must say so
  for (size_t i = 0; i < rules.size(); ++i) {
    const ElementRule& r = rules[i];
    int ranged = 0;
    for (int64_t q = 0; q < T; ++q) {
      int64_t lo, hi, sink_hi;
      if (!r.key_ranges(q, T, lo, hi, sink_hi)) continue;
      ++ranged;
      for (int64_t k = 0; k < T; ++k)
        ASSERT_EQ(r.allows(q, k), (k >= lo && k <= hi) || k <= sink_hi) << "rule " << i << " q " << q << " k " << k;
    }
    EXPECT_EQ(ranged, i == 7 ? 0 : T) << "rule " << i;
  }
}

TEST(BlockMask, ValidateRejectsUnsortedRows) {
  BlockMask m = attn::dense_mask(10, 100, false, 0, 10, 10);
  ASSERT_NO_THROW(m.validate());
  std::swap(m.key_blocks[0], m.key_blocks[1]);
  EXPECT_THROW(m.validate(), Error);
  m.key_blocks[0] = 10;
  EXPECT_THROW(m.validate(), Error);
}

TEST(BlockMask, DenseCausalListsBlocksAtOrBelowDiagonal) {
  const BlockMask m = attn::dense_mask(100, 100, true, 0, 16, 32);
  for (int64_t qb = 0; qb < m.num_q_blocks(); ++qb) {
    const int64_t last_q = std::min<int64_t>(100, (qb + 1) * 16) - 1;
    const auto row = m.row(0, 0, qb);
    ASSERT_EQ(static_cast<int64_t>(row.size()), last_q / 32 + 1);
    for (size_t i = 0; i < row.size(); ++i) EXPECT_EQ(row[i], static_cast<int32_t>(i));
  }
  EXPECT_DOUBLE_EQ(m.density(), 1.0);
}

}  // namespace
}  // namespace subq::test
