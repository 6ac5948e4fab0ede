// Dynamic selectors: structure of their masks (causal, sorted unique, diagonal kept,
// density monotone in the selector's parameter), the executor on each selector's own mask
// against float64 attention under that mask, and the needle a selector must find.
#include <gtest/gtest.h>

#include <functional>

#include "src/ops/attention/selectors/dynamic_selectors.h"
#include "src/ops/attention/selectors/selector_spec.h"
#include "tests/ops/attention/attention_case.h"
#include "tests/reference/dynamic_selectors.h"

namespace subq::test {
namespace {

using attn::BlockMask;
using attn::MaskGeometry;

attn::AttentionArgs qk_args(const AttnProblem& p) {
  attn::AttentionArgs a;
  a.q = p.q.data<float>();
  a.q_batch_stride = p.Tq * p.Hq * p.Dh;
  a.q_row_stride = p.Hq * p.Dh;
  a.k = p.k.data<float>();
  a.v = p.v.data<float>();
  a.k_batch_stride = a.v_batch_stride = p.Tk * p.Hkv * p.Dh;
  a.k_row_stride = a.v_row_stride = p.Hkv * p.Dh;
  a.batch = p.B;
  a.q_len = p.Tq;
  a.kv_len = p.Tk;
  a.q_heads = p.Hq;
  a.kv_heads = p.Hkv;
  a.head_dim = p.Dh;
  a.scale = static_cast<float>(p.used_scale());
  return a;
}

void expect_structure(const BlockMask& m, int64_t B, int64_t H, const std::string& what) {
  ASSERT_NO_THROW(m.validate()) << what;
  EXPECT_TRUE(m.rule.causal) << what;
  const int64_t first = m.q_offset / m.q_block;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t qb = 0; qb < m.num_q_blocks(); ++qb) {
        const auto row = m.row(b, h, qb);
        ASSERT_FALSE(row.empty()) << what;
        EXPECT_EQ(row.back(), first + qb) << what << ": diagonal block missing or a future block listed";
      }
  EXPECT_GT(m.density(), 0.0);
  EXPECT_LE(m.density(), 1.0);
}

struct Selector {
  std::string name;
  std::function<BlockMask(const MaskGeometry&, const attn::AttentionArgs&, double)> build;
  std::vector<double> params;  // increasing: density must not decrease
};

std::vector<Selector> selectors() {
  return {
      {"moba", [](const MaskGeometry& g, const attn::AttentionArgs& a, double k) {
         return attn::moba_mask(g, a, static_cast<int64_t>(k));
       }, {0, 1, 2, 4, 16}},
      {"hip", [](const MaskGeometry& g, const attn::AttentionArgs& a, double k) {
         return attn::hip_mask(g, a, static_cast<int64_t>(k));
       }, {1, 2, 4, 16}},
      {"flexprefill", [](const MaskGeometry& g, const attn::AttentionArgs& a, double gamma) {
         return attn::flexprefill_mask(g, a, gamma, 0.1);
       }, {0.3, 0.7, 0.95, 1.0}},
      {"flexprefill-query-aware", [](const MaskGeometry& g, const attn::AttentionArgs& a, double gamma) {
         return attn::flexprefill_mask(g, a, gamma, 10.0);  // tau above any JS distance
       }, {0.3, 0.7, 0.95, 1.0}},
      {"xattention", [](const MaskGeometry& g, const attn::AttentionArgs& a, double th) {
         return attn::xattention_mask(g, a, th, 4);
       }, {0.2, 0.5, 0.9, 1.0}},
  };
}

TEST(DynamicSelectors, StructureDensityAndExecutor) {
  auto rng = rng_for_test();
  for (const Selector& sel : selectors()) {
    for (int64_t offset : {0, 64}) {
      const int64_t Tq = 290, Tk = Tq + offset;
      AttnProblem p(rng, 1, Tq, Tk, 4, 2, 32);
      const MaskGeometry g{Tq, Tk, offset, 32, 32, 4, nullptr};
      double prev = 0;
      for (double param : sel.params) {
        const std::string what = sel.name + " param " + std::to_string(param) + " offset " + std::to_string(offset);
        const BlockMask m = sel.build(g, qk_args(p), param);
        expect_structure(m, 1, 4, what);
        EXPECT_GE(m.density() + 1e-12, prev) << what << ": density fell as the parameter grew";
        prev = m.density();
        if (param == sel.params[1]) {
          auto want = p.reference(m);
          expect_close(p.run(m), want, kAttnRtol, kAttnAtol, what);
        }
      }
      // The most permissive setting keeps everything (top_k >= blocks, mass 1).
      if (sel.name != "hip") {
        EXPECT_NEAR(prev, 1.0, 1e-12) << sel.name;
      }
    }
  }
}

// Queries all near a direction u, and one planted key block (keys ~ 3u) far in the past:
// block-pooled MoBA scoring must pick it for every later query block.
TEST(DynamicSelectors, MobaFindsAPlantedNeedleBlock) {
  auto rng = rng_for_test();
  const int64_t T = 512, Dh = 32, blk = 32, needle = 3;
  AttnProblem p(rng, 1, T, T, 2, 1, Dh);
  const auto u = normal(rng, static_cast<size_t>(Dh), 1.f);
  float* q = p.q.mutable_data<float>();
  float* k = p.k.mutable_data<float>();
  for (int64_t i = 0; i < T; ++i)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t x = 0; x < Dh; ++x) q[(i * 2 + h) * Dh + x] = u[static_cast<size_t>(x)] + 0.3f * q[(i * 2 + h) * Dh + x];
  for (int64_t j = needle * blk; j < (needle + 1) * blk; ++j)
    for (int64_t x = 0; x < Dh; ++x) k[j * Dh + x] = 3.f * u[static_cast<size_t>(x)] + 0.3f * k[j * Dh + x];
  const BlockMask m = attn::moba_mask(MaskGeometry{T, T, 0, blk, blk, 2, nullptr}, qk_args(p), 1);
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t qb = needle + 1; qb < T / blk; ++qb) {
      const auto row = m.row(0, h, qb);
      EXPECT_TRUE(std::binary_search(row.begin(), row.end(), static_cast<int32_t>(needle)))
          << "head " << h << " query block " << qb;
    }
  // The same needle must dominate XAttention's antidiagonal mass at a low threshold.
  const BlockMask x = attn::xattention_mask(MaskGeometry{T, T, 0, blk, blk, 2, nullptr}, qk_args(p), 0.3, 4);
  const auto row = x.row(0, 0, T / blk - 1);
  EXPECT_TRUE(std::binary_search(row.begin(), row.end(), static_cast<int32_t>(needle)));
}

TEST(DynamicSelectors, HipBuildsLogarithmicallyManyBlocks) {
  auto rng = rng_for_test();
  const int64_t T = 2048;
  AttnProblem p(rng, 1, T, T, 1, 1, 32);
  const BlockMask m = attn::hip_mask(MaskGeometry{T, T, 0, 16, 16, 1, nullptr}, qk_args(p), 3);
  for (int64_t qb = 0; qb < m.num_q_blocks(); ++qb) EXPECT_LE(m.row(0, 0, qb).size(), 4u);  // top_k + diagonal
}

// Each selector's mask against its float64 definition (tests/reference/dynamic_selectors.h)
// on awkward geometries: batch 2, grouped heads, lengths off the block grid, a chunk
// against a cache, one token. f32 scores may rank two values that tie to rounding the
// other way, so up to 1% of rows (at least one) may differ; a wrong pooling, head
// mapping, causal limit, tie rule or mass cut changes most rows.
TEST(DynamicSelectors, MasksMatchTheirFloat64Definitions) {
  auto rng = rng_for_test();
  struct Shape {
    int64_t B, Tq, offset, Hq, Hkv, Dh, block;
  };
  const Shape shapes[] = {{2, 290, 0, 4, 2, 32, 32}, {1, 200, 64, 3, 1, 48, 16}, {1, 1, 0, 2, 2, 32, 32},
                          {1, 333, 0, 2, 1, 64, 64}, {2, 97, 96, 2, 2, 16, 32}};
  for (const Shape& sh : shapes) {
    const int64_t Tk = sh.offset + sh.Tq;
    AttnProblem p(rng, sh.B, sh.Tq, Tk, sh.Hq, sh.Hkv, sh.Dh);
    // Every other head's queries sharpened, so that FlexPrefill's heads choose both ways.
    float* q = p.q.mutable_data<float>();
    for (int64_t i = 0; i < sh.B * sh.Tq; ++i)
      for (int64_t h = 0; h < sh.Hq; h += 2)
        for (int64_t x = 0; x < sh.Dh; ++x) q[(i * sh.Hq + h) * sh.Dh + x] *= 6.f;
    const MaskGeometry g{sh.Tq, Tk, sh.offset, sh.block, sh.block, sh.Hq, nullptr};
    const auto q64 = to_double(p.q), k64 = to_double(p.k);
    const ref::SelectorInput in{q64, k64, sh.B, sh.Tq, Tk, sh.Hq, sh.Hkv, sh.Dh, sh.offset, sh.block};
    const double scale = p.used_scale();
    const auto expect_rows = [&](const BlockMask& m, const ref::SelectorRows& want, const std::string& what) {
      SCOPED_TRACE(what + " B=" + std::to_string(sh.B) + " Tq=" + std::to_string(sh.Tq) + " offset=" +
                   std::to_string(sh.offset) + " H=" + std::to_string(sh.Hq) + "/" + std::to_string(sh.Hkv) +
                   " block=" + std::to_string(sh.block));
      ASSERT_EQ(static_cast<size_t>(sh.B * sh.Hq * m.num_q_blocks()), want.size());
      int64_t differing = 0;
      for (int64_t b = 0; b < sh.B; ++b)
        for (int64_t h = 0; h < sh.Hq; ++h)
          for (int64_t qb = 0; qb < m.num_q_blocks(); ++qb) {
            const auto row = m.row(b, h, qb);
            const auto& w = want[static_cast<size_t>((b * sh.Hq + h) * m.num_q_blocks() + qb)];
            differing += !std::equal(row.begin(), row.end(), w.begin(), w.end());
          }
      EXPECT_LE(differing, std::max<int64_t>(1, static_cast<int64_t>(want.size()) / 100));
    };
    for (int64_t k : {1, 3})
      expect_rows(attn::moba_mask(g, qk_args(p), k), ref::moba_rows(in, k), "moba top_k " + std::to_string(k));
    for (int64_t k : {1, 2, 5})
      expect_rows(attn::hip_mask(g, qk_args(p), k), ref::hip_rows(in, k), "hip top_k " + std::to_string(k));
    for (double threshold : {0.3, 0.9})
      for (int64_t stride : {1, 4, 8})
        expect_rows(attn::xattention_mask(g, qk_args(p), threshold, stride),
                    ref::xattention_rows(in, threshold, stride, scale),
                    "xattention threshold " + std::to_string(threshold) + " stride " + std::to_string(stride));
    for (double gamma : {0.3, 0.9})
      for (double tau : {0.0, 0.3, 10.0})
        expect_rows(attn::flexprefill_mask(g, qk_args(p), gamma, tau), ref::flexprefill_rows(in, gamma, tau, scale),
                    "flexprefill gamma " + std::to_string(gamma) + " tau " + std::to_string(tau));
  }
}

TEST(DynamicSelectors, RejectBadInputs) {
  auto rng = rng_for_test();
  AttnProblem p(rng, 1, 64, 64, 2, 1, 32);
  const MaskGeometry g{64, 64, 0, 32, 32, 2, nullptr};
  EXPECT_THROW(attn::xattention_mask(g, qk_args(p), 0.9, 5), Error);   // stride does not divide the block
  EXPECT_THROW(attn::flexprefill_mask(g, qk_args(p), 1.5, 0.1), Error);
  EXPECT_THROW(attn::moba_mask(MaskGeometry{64, 64, 0, 32, 16, 2, nullptr}, qk_args(p), 2), Error);
  attn::AttentionArgs none = qk_args(p);
  none.k = nullptr;
  EXPECT_THROW(attn::hip_mask(g, none, 2), Error);
  EXPECT_EQ(attn::parse_selector("moba:top_k=3,block=32").top_k, 3);
  EXPECT_EQ(attn::to_string(attn::parse_selector("xattention:threshold=0.5,stride=4")),
            "xattention:block=64,threshold=0.5,stride=4");
}

}  // namespace
}  // namespace subq::test
