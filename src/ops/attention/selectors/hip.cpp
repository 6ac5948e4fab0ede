#include <algorithm>
#include <string>

#include "src/core/parallel.h"
#include "src/ops/attention/selectors/dynamic_selectors.h"
#include "src/ops/attention/selectors/selector_math.h"
#include "subq/tensor.h"

namespace subq::attn {

BlockMask hip_mask(const MaskGeometry& g, const AttentionArgs& qk, int64_t top_k) {
  check_dynamic_inputs(g, qk, "hip_mask");
  const float* keys = qk.f32_keys("hip_mask");
  if (top_k < 1) throw Error("hip_mask: top_k must be >= 1, found " + std::to_string(top_k));
  const int64_t B = qk.batch, Hq = qk.q_heads, Hkv = qk.kv_heads, Dh = qk.head_dim, blk = g.q_block;
  const int64_t nqb = (g.q_len + blk - 1) / blk, nkb = (g.kv_len + blk - 1) / blk;
  const auto qm = block_means(qk.q, qk.q_batch_stride, qk.q_row_stride, B, g.q_len, Hq, Dh, blk);
  const auto km = block_means(keys, qk.k_batch_stride, qk.k_row_stride, B, g.kv_len, Hkv, Dh, blk);
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(B * Hq * nqb));
  const int64_t first = g.q_offset / blk;
  parallel_for_each(B * Hq * nqb, [&](int64_t r) {
    const int64_t qb = r % nqb, h = (r / nqb) % Hq, b = r / (nqb * Hq);
    const int64_t past = std::min(first + qb, nkb);
    const float* q = qm.data() + ((b * Hq + h) * nqb + qb) * Dh;
    const float* keys = km.data() + (b * Hkv + h / (Hq / Hkv)) * nkb * Dh;
    // Candidate ranges [lo, hi) of past blocks; each level halves them and keeps the
    // top_k halves by their middle block's score.
    std::vector<std::pair<int64_t, int64_t>> ranges;
    if (past > 0) ranges.push_back({0, past});
    std::vector<std::pair<float, std::pair<int64_t, int64_t>>> scored;
    while (true) {
      bool split = false;
      scored.clear();
      for (const auto& [lo, hi] : ranges) {
        if (hi - lo == 1) {
          scored.push_back({dot(q, keys + lo * Dh, Dh), {lo, hi}});
          continue;
        }
        split = true;
        const int64_t mid = (lo + hi) / 2;
        scored.push_back({dot(q, keys + ((lo + mid) / 2) * Dh, Dh), {lo, mid}});
        scored.push_back({dot(q, keys + ((mid + hi) / 2) * Dh, Dh), {mid, hi}});
      }
      const size_t keep = std::min(scored.size(), static_cast<size_t>(top_k));
      std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(keep), scored.end(),
                        [](const auto& a, const auto& c) {
                          return a.first > c.first || (a.first == c.first && a.second.first < c.second.first);
                        });
      ranges.clear();
      for (size_t i = 0; i < keep; ++i) ranges.push_back(scored[i].second);
      if (!split) break;
    }
    auto& row = rows[static_cast<size_t>(r)];
    for (const auto& [lo, hi] : ranges)
      for (int64_t kb = lo; kb < hi; ++kb) row.push_back(static_cast<int32_t>(kb));
  });
  return assemble_rows(g, B, Hq, rows);
}

}  // namespace subq::attn
