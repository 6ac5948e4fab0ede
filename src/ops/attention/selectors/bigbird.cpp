#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "src/ops/attention/selectors/block_geometry.h"
#include "src/ops/attention/selectors/static_selectors.h"
#include "subq/tensor.h"

namespace subq::attn {

std::vector<int32_t> bigbird_random_blocks(uint64_t seed, int64_t h, int64_t qb, int64_t count, int64_t limit,
                                           int64_t global_blocks, int64_t skip_lo, int64_t skip_hi) {
  std::vector<int32_t> candidates;
  for (int64_t kb = global_blocks; kb < limit; ++kb)
    if (kb < skip_lo || kb > skip_hi) candidates.push_back(static_cast<int32_t>(kb));
  // splitmix-style mixing so neighbouring (h, qb) get unrelated streams.
  uint64_t s = seed ^ (static_cast<uint64_t>(h) * 0x9E3779B97F4A7C15ull) ^ (static_cast<uint64_t>(qb) * 0xC2B2AE3D27D4EB4Full);
  std::mt19937_64 rng(s);
  const size_t take = static_cast<size_t>(std::min<int64_t>(count, static_cast<int64_t>(candidates.size())));
  for (size_t i = 0; i < take; ++i) {
    std::uniform_int_distribution<size_t> pick(i, candidates.size() - 1);
    std::swap(candidates[i], candidates[pick(rng)]);
  }
  candidates.resize(take);
  std::sort(candidates.begin(), candidates.end());
  return candidates;
}

BlockMask bigbird_mask(const MaskGeometry& g, int64_t global_blocks, int64_t window_blocks, int64_t random_blocks,
                       uint64_t seed, bool causal) {
  check_aligned_blocks(g, "bigbird_mask");
  if (global_blocks < 0 || window_blocks < 0 || random_blocks < 0)
    throw Error("bigbird_mask: global, window and random block counts must be >= 0");
  ElementRule rule;
  rule.causal = causal;
  BlockMaskBuilder b(1, g.heads, g.q_len, g.kv_len, g.q_block, g.k_block, g.q_offset, rule);
  const int64_t nkb = (g.kv_len + g.k_block - 1) / g.k_block;
  const int64_t first_qb = g.q_offset / g.q_block;
  std::vector<int32_t> row;
  for (int64_t h = 0; h < g.heads; ++h)
    for (int64_t qb = 0; qb * g.q_block < g.q_len; ++qb) {
      row.clear();
      const int64_t aq = first_qb + qb;
      const int64_t limit = causal ? std::min(nkb, aq + 1) : nkb;  // blocks a query may see
      if (aq < global_blocks) {
        for (int64_t kb = 0; kb < limit; ++kb) row.push_back(static_cast<int32_t>(kb));
      } else {
        for (int64_t kb = 0; kb < std::min(global_blocks, limit); ++kb) row.push_back(static_cast<int32_t>(kb));
        const int64_t lo = std::max<int64_t>(0, aq - window_blocks);
        const int64_t hi = std::min(limit - 1, aq + (causal ? 0 : window_blocks));
        for (int64_t kb = lo; kb <= hi; ++kb) row.push_back(static_cast<int32_t>(kb));
        for (int32_t kb : bigbird_random_blocks(seed, h, aq, random_blocks, limit, global_blocks, lo, hi))
          row.push_back(kb);
      }
      b.add_row(row);
    }
  return b.finish();
}

}  // namespace subq::attn
