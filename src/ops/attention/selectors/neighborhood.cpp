#include <algorithm>
#include <string>
#include <vector>

#include "src/ops/attention/selectors/static_selectors.h"
#include "subq/tensor.h"

namespace subq::attn {

BlockMask neighborhood_mask(const MaskGeometry& g, const Neighborhood& n) {
  n.validate();
  if (g.q_len != n.tokens() || g.kv_len != n.tokens() || g.q_offset != 0 || g.key_positions)
    throw Error("neighborhood_mask: needs q_len == kv_len == grid tokens " + std::to_string(n.tokens()) +
                " and q_offset 0, found q_len " + std::to_string(g.q_len) + ", kv_len " + std::to_string(g.kv_len) +
                ", q_offset " + std::to_string(g.q_offset));
  ElementRule rule;
  rule.neighborhood = true;
  rule.nbhd = n;
  BlockMaskBuilder b(1, 1, g.q_len, g.kv_len, g.q_block, g.k_block, 0, rule);
  const int64_t nkb = (g.kv_len + g.k_block - 1) / g.k_block;
  std::vector<char> hit(static_cast<size_t>(nkb));
  std::vector<int32_t> row;
  const int nd = n.ndim;
  for (int64_t i0 = 0; i0 < g.q_len; i0 += g.q_block) {
    std::fill(hit.begin(), hit.end(), 0);
    for (int64_t q = i0; q < std::min(g.q_len, i0 + g.q_block); ++q) {
      // Per dimension the window's first coordinate and how many keys it holds.
      int64_t start[3] = {0, 0, 0}, count[3] = {1, 1, 1}, coord[3] = {0, 0, 0};
      int64_t rest = q;
      for (int d = nd - 1; d >= 0; --d) {
        const size_t i = static_cast<size_t>(d);
        coord[i] = rest % n.grid[i];
        rest /= n.grid[i];
      }
      for (int d = 0; d < nd; ++d) {
        const size_t i = static_cast<size_t>(d);
        start[i] = n.window_start(d, coord[i]);
        count[i] = n.causal[i] ? (coord[i] - start[i]) / n.dilation[i] + 1 : n.kernel[i];
      }
      for (int64_t a = 0; a < count[0]; ++a)
        for (int64_t bb = 0; bb < (nd > 1 ? count[1] : 1); ++bb)
          for (int64_t c = 0; c < (nd > 2 ? count[2] : 1); ++c) {
            int64_t k = start[0] + a * n.dilation[0];
            if (nd > 1) k = k * n.grid[1] + start[1] + bb * n.dilation[1];
            if (nd > 2) k = k * n.grid[2] + start[2] + c * n.dilation[2];
            hit[static_cast<size_t>(k / g.k_block)] = 1;
          }
    }
    row.clear();
    for (int64_t kb = 0; kb < nkb; ++kb)
      if (hit[static_cast<size_t>(kb)]) row.push_back(static_cast<int32_t>(kb));
    b.add_row(row);
  }
  return b.finish();
}

}  // namespace subq::attn
