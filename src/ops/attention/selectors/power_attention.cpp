#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "src/ops/attention/selectors/block_geometry.h"
#include "src/ops/attention/selectors/static_selectors.h"
#include "subq/tensor.h"

namespace subq::attn {

BlockMask power_attention_mask(const MaskGeometry& g, int64_t local_blocks, int64_t sink_blocks, bool causal) {
  check_aligned_blocks(g, "power_attention_mask");
  if (local_blocks < 0 || sink_blocks < 0)
    throw Error("power_attention_mask: local_blocks and sink_blocks must be >= 0");
  ElementRule rule;
  rule.causal = causal;
  BlockMaskBuilder b(1, 1, g.q_len, g.kv_len, g.q_block, g.k_block, g.q_offset, rule);
  const int64_t nkb = (g.kv_len + g.k_block - 1) / g.k_block;
  const int64_t first_qb = g.q_offset / g.q_block;
  std::vector<int32_t> row;
  for (int64_t qb = 0; qb * g.q_block < g.q_len; ++qb) {
    row.clear();
    const int64_t aq = first_qb + qb;
    const int64_t limit = causal ? std::min(nkb, aq + 1) : nkb;
    for (int64_t kb = 0; kb < std::min(sink_blocks, limit); ++kb) row.push_back(static_cast<int32_t>(kb));
    for (int64_t kb = 0; kb < limit; ++kb) {
      const int64_t d = std::abs(aq - kb);
      if (causal && kb > aq) continue;
      if (d <= local_blocks || (d & (d - 1)) == 0) row.push_back(static_cast<int32_t>(kb));
    }
    b.add_row(row);
  }
  return b.finish();
}

}  // namespace subq::attn
