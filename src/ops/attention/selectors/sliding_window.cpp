#include <algorithm>
#include <string>
#include <vector>

#include "src/ops/attention/selectors/static_selectors.h"
#include "subq/tensor.h"

namespace subq::attn {

BlockMask sliding_window_mask(const MaskGeometry& g, int64_t window, int64_t sinks, bool causal) {
  if (window < 1) throw Error("sliding_window_mask: window must be >= 1, found " + std::to_string(window));
  if (sinks < 0) throw Error("sliding_window_mask: sinks must be >= 0, found " + std::to_string(sinks));
  ElementRule rule;
  rule.causal = causal;
  rule.window_left = causal ? window - 1 : window / 2;
  rule.window_right = causal ? -1 : window / 2;
  rule.sinks = sinks;
  BlockMaskBuilder b(1, 1, g.q_len, g.kv_len, g.q_block, g.k_block, g.q_offset, rule);
  // First slot at or after position p (slots are sorted by position).
  auto slot_of = [&](int64_t p) -> int64_t {
    if (!g.key_positions) return std::clamp<int64_t>(p, 0, g.kv_len);
    return std::lower_bound(g.key_positions, g.key_positions + g.kv_len, p) - g.key_positions;
  };
  const int64_t sink_slots = slot_of(sinks);
  std::vector<int32_t> row;
  for (int64_t i0 = 0; i0 < g.q_len; i0 += g.q_block) {
    row.clear();
    const int64_t p0 = g.q_offset + i0, p1 = g.q_offset + std::min(g.q_len, i0 + g.q_block) - 1;
    const int64_t lo = slot_of(p0 - rule.window_left);
    const int64_t hi = slot_of((causal ? p1 : p1 + rule.window_right) + 1);  // exclusive
    for (int64_t kb = 0; kb * g.k_block < sink_slots; ++kb) row.push_back(static_cast<int32_t>(kb));
    if (hi > lo)
      for (int64_t kb = lo / g.k_block; kb * g.k_block < hi; ++kb) row.push_back(static_cast<int32_t>(kb));
    b.add_row(row);
  }
  return b.finish();
}

}  // namespace subq::attn
