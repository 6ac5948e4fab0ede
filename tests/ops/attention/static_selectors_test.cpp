// Each static selector: its element mask (listed blocks AND element rule) equals a naive
// pair-by-pair definition, and the executor over it equals float64 masked attention.
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>

#include "src/ops/attention/selectors/static_selectors.h"
#include "tests/ops/attention/attention_case.h"

namespace subq::test {
namespace {

using attn::BlockMask;
using attn::MaskGeometry;

// Every (b, h, i, j) of the mask against the naive definition.
void expect_mask_equals(const BlockMask& m, int64_t heads, const ref::PairMask& naive, const std::string& what,
                        const int32_t* key_positions = nullptr) {
  int64_t allowed = 0, mismatches = 0;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < m.q_len; ++i)
      for (int64_t j = 0; j < m.kv_len; ++j) {
        const bool got = ref::block_mask_allows(m, 0, h, i, j, key_positions);
        const bool want = naive(0, h, i, j);
        allowed += want;
        if (got != want && mismatches++ < 5)
          ADD_FAILURE() << what << ": head " << h << " query " << i << " key " << j << ": mask says " << got
                        << ", definition says " << want;
      }
  EXPECT_EQ(mismatches, 0) << what;
  EXPECT_GT(allowed, 0) << what << ": empty definition, the comparison proves nothing";
}

void expect_executor_matches(std::mt19937_64& rng, const BlockMask& m, int64_t Hq, int64_t Hkv,
                             const ref::PairMask& naive, const std::string& what) {
  AttnProblem p(rng, 2, m.q_len, m.kv_len, Hq, Hkv, 32);
  expect_close(p.run(m), p.reference(naive), kAttnRtol, kAttnAtol, what);
}

TEST(SlidingWindow, CausalWithAndWithoutSinks) {
  auto rng = rng_for_test();
  for (int64_t T : {1, 17, 150}) {
    for (int64_t W : {1, 5, 40}) {
      for (int64_t sinks : {0, 4}) {
        const MaskGeometry g{T, T, 0, 16, 32, 1, nullptr};
        const BlockMask m = attn::sliding_window_mask(g, W, sinks, true);
        auto naive = [&](int64_t, int64_t, int64_t i, int64_t j) { return j <= i && (j < sinks || j > i - W); };
        const std::string what = "T=" + std::to_string(T) + " W=" + std::to_string(W) + " sinks=" + std::to_string(sinks);
        expect_mask_equals(m, 1, naive, what);
        expect_executor_matches(rng, m, 4, 2, naive, what);
        if (T == 150 && W == 5) {
          EXPECT_LT(m.density(), 1.0) << what;  // blocks beyond the window are skipped
        }
      }
    }
  }
}

TEST(SlidingWindow, NonCausalSymmetric) {
  auto rng = rng_for_test();
  const MaskGeometry g{130, 130, 0, 32, 16, 1, nullptr};
  const BlockMask m = attn::sliding_window_mask(g, 20, 0, false);
  auto naive = [](int64_t, int64_t, int64_t i, int64_t j) { return std::abs(i - j) <= 10; };
  expect_mask_equals(m, 1, naive, "symmetric window 20");
  expect_executor_matches(rng, m, 2, 1, naive, "symmetric window 20");
}

// A chunk of queries at offset 90 against an evicted cache: positions 0..3 then 60..109.
TEST(SlidingWindow, ChunkAgainstEvictedCache) {
  std::vector<int32_t> pos;
  for (int32_t p = 0; p < 4; ++p) pos.push_back(p);
  for (int32_t p = 60; p < 110; ++p) pos.push_back(p);
  const int64_t Tk = static_cast<int64_t>(pos.size()), Tq = 20, offset = 90;
  const MaskGeometry g{Tq, Tk, offset, 8, 16, 1, pos.data()};
  const BlockMask m = attn::sliding_window_mask(g, 24, 4, true);
  auto naive = [&](int64_t, int64_t, int64_t i, int64_t j) {
    const int64_t qp = offset + i, kp = pos[static_cast<size_t>(j)];
    return kp <= qp && (kp < 4 || kp > qp - 24);
  };
  expect_mask_equals(m, 1, naive, "evicted cache", pos.data());
}

TEST(BigBird, MaskMatchesDefinitionAndExecutor) {
  auto rng = rng_for_test();
  const int64_t B = 16;
  for (bool causal : {true, false}) {
    for (int64_t T : {17, 200}) {
      const uint64_t seed = rng();
      const int64_t g_blocks = 1, w = 1, r = 2, heads = 3;
      const MaskGeometry g{T, T, 0, B, B, heads, nullptr};
      const BlockMask m = attn::bigbird_mask(g, g_blocks, w, r, seed, causal);
      const int64_t nkb = (T + B - 1) / B;
      auto naive = [&](int64_t, int64_t h, int64_t i, int64_t j) {
        const int64_t aq = i / B, kb = j / B;
        if (causal && j > i) return false;
        if (kb < g_blocks || aq < g_blocks || std::abs(aq - kb) <= w) return causal ? kb <= aq : true;
        const int64_t limit = causal ? std::min(nkb, aq + 1) : nkb;
        const int64_t lo = std::max<int64_t>(0, aq - w), hi = std::min(limit - 1, aq + (causal ? 0 : w));
        const auto rnd = attn::bigbird_random_blocks(seed, h, aq, r, limit, g_blocks, lo, hi);
        return std::binary_search(rnd.begin(), rnd.end(), static_cast<int32_t>(kb));
      };
      const std::string what = std::string(causal ? "causal" : "full") + " T=" + std::to_string(T);
      expect_mask_equals(m, heads, naive, what);
      expect_executor_matches(rng, m, heads, heads, naive, what);
    }
  }
}

TEST(BigBird, RandomBlocksAreDistinctOutsideTheWindowAndSeeded) {
  const auto a = attn::bigbird_random_blocks(7, 0, 20, 3, 40, 1, 18, 22);
  ASSERT_EQ(a.size(), 3u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(a[i] >= 1 && a[i] < 40 && (a[i] < 18 || a[i] > 22)) << a[i];
    if (i) {
      EXPECT_LT(a[i - 1], a[i]);
    }
  }
  EXPECT_EQ(a, attn::bigbird_random_blocks(7, 0, 20, 3, 40, 1, 18, 22));
  std::set<std::vector<int32_t>> draws;
  for (uint64_t seed = 0; seed < 8; ++seed) draws.insert(attn::bigbird_random_blocks(seed, 0, 20, 3, 40, 1, 18, 22));
  EXPECT_GT(draws.size(), 4u) << "the seed does not change the draw";
  EXPECT_EQ(attn::bigbird_random_blocks(7, 0, 3, 5, 4, 1, 2, 3).size(), 1u);  // only block 1 is a candidate
}

TEST(Neighborhood, WindowsMatchNattenDefinition) {
  auto rng = rng_for_test();
  struct Case {
    int ndim;
    std::array<int64_t, 3> grid, kernel, dilation, stride;
    std::array<bool, 3> causal;
  };
  const Case cases[] = {
      {1, {37, 1, 1}, {7, 1, 1}, {1, 1, 1}, {1, 1, 1}, {false, false, false}},
      // Wide 1-D windows: whole tiles inside every window take the executor's unmasked path.
      {1, {100, 1, 1}, {31, 1, 1}, {1, 1, 1}, {1, 1, 1}, {false, false, false}},
      {1, {100, 1, 1}, {31, 1, 1}, {1, 1, 1}, {1, 1, 1}, {true, false, false}},
      {1, {40, 1, 1}, {5, 1, 1}, {3, 1, 1}, {1, 1, 1}, {false, false, false}},
      {1, {41, 1, 1}, {5, 1, 1}, {2, 1, 1}, {1, 1, 1}, {true, false, false}},
      {1, {30, 1, 1}, {7, 1, 1}, {1, 1, 1}, {3, 1, 1}, {false, false, false}},
      {2, {9, 13, 1}, {3, 5, 1}, {2, 1, 1}, {1, 2, 1}, {false, false, false}},
      {2, {10, 10, 1}, {3, 3, 1}, {1, 3, 1}, {1, 1, 1}, {true, false, false}},
      {3, {4, 6, 7}, {3, 3, 3}, {1, 2, 1}, {1, 1, 2}, {false, false, false}},
      // Stride inside a dilation group, causal strides (the run's last query leads), even
      // kernels and strides (the window one key longer on the left; the right-of-centre
      // query leads): NATTEN's generalized neighborhoods.
      {1, {40, 1, 1}, {5, 1, 1}, {3, 1, 1}, {2, 1, 1}, {false, false, false}},
      {1, {41, 1, 1}, {5, 1, 1}, {2, 1, 1}, {3, 1, 1}, {true, false, false}},
      {1, {37, 1, 1}, {6, 1, 1}, {1, 1, 1}, {4, 1, 1}, {false, false, false}},
      {2, {12, 10, 1}, {3, 4, 1}, {2, 1, 1}, {3, 2, 1}, {true, false, false}},
  };
  for (const Case& c : cases) {
    attn::Neighborhood n;
    n.ndim = c.ndim;
    n.grid = c.grid;
    n.kernel = c.kernel;
    n.dilation = c.dilation;
    n.stride = c.stride;
    n.causal = c.causal;
    const int64_t T = n.tokens();
    const MaskGeometry g{T, T, 0, 16, 8, 1, nullptr};
    const BlockMask m = attn::neighborhood_mask(g, n);
    auto naive = [&](int64_t, int64_t, int64_t i, int64_t j) { return ref::neighborhood_allows(n, i, j); };
    const std::string what = std::to_string(c.ndim) + "-D grid " + std::to_string(c.grid[0]) + "x" +
                             std::to_string(c.grid[1]) + "x" + std::to_string(c.grid[2]);
    expect_mask_equals(m, 1, naive, what);
    expect_executor_matches(rng, m, 2, 1, naive, what);
    // Non-causal, stride 1: every query sees exactly prod(kernel) keys.
    bool plain = true;
    for (int d = 0; d < c.ndim; ++d) plain = plain && !c.causal[static_cast<size_t>(d)] && c.stride[static_cast<size_t>(d)] == 1;
    if (plain) {
      int64_t want = 1;
      for (int d = 0; d < c.ndim; ++d) want *= c.kernel[static_cast<size_t>(d)];
      for (int64_t i = 0; i < T; i += 7) {
        int64_t seen = 0;
        for (int64_t j = 0; j < T; ++j) seen += ref::block_mask_allows(m, 0, 0, i, j);
        EXPECT_EQ(seen, want) << what << " query " << i;
      }
    }
  }
}

TEST(Neighborhood, RejectsKernelLargerThanGrid) {
  attn::Neighborhood n;
  n.grid = {5, 1, 1};
  n.kernel = {3, 1, 1};
  n.dilation = {2, 1, 1};
  EXPECT_THROW(n.validate(), Error);
  n.dilation = {1, 1, 1};
  EXPECT_NO_THROW(n.validate());
  EXPECT_THROW(attn::neighborhood_mask(MaskGeometry{6, 6, 0, 4, 4, 1, nullptr}, n), Error);
}

TEST(PowerAttention, MaskMatchesDefinitionAndExecutor) {
  auto rng = rng_for_test();
  const int64_t B = 8;
  for (bool causal : {true, false}) {
    const int64_t T = 300, local = 1, sinks = 1;
    const BlockMask m = attn::power_attention_mask(MaskGeometry{T, T, 0, B, B, 1, nullptr}, local, sinks, causal);
    auto naive = [&](int64_t, int64_t, int64_t i, int64_t j) {
      if (causal && j > i) return false;
      const int64_t d = std::abs(i / B - j / B);
      return j / B < sinks || d <= local || (d & (d - 1)) == 0;
    };
    expect_mask_equals(m, 1, naive, causal ? "causal" : "full");
    expect_executor_matches(rng, m, 2, 2, naive, causal ? "causal" : "full");
    EXPECT_LT(m.density(), 0.4);  // O(log n) blocks per row of 38
  }
}

}  // namespace
}  // namespace subq::test
