#include <algorithm>
#include <numeric>
#include <string>

#include "src/core/parallel.h"
#include "src/ops/attention/selectors/dynamic_selectors.h"
#include "src/ops/attention/selectors/selector_math.h"
#include "subq/tensor.h"

namespace subq::attn {

// MoBA gates each query token; the executor works per query block, so the block's mean
// query stands for its tokens.
BlockMask moba_mask(const MaskGeometry& g, const AttentionArgs& qk, int64_t top_k) {
  check_dynamic_inputs(g, qk, "moba_mask");
  const float* keys = qk.f32_keys("moba_mask");
  if (top_k < 0) throw Error("moba_mask: top_k must be >= 0, found " + std::to_string(top_k));
  const int64_t B = qk.batch, Hq = qk.q_heads, Hkv = qk.kv_heads, Dh = qk.head_dim, blk = g.q_block;
  const int64_t nqb = (g.q_len + blk - 1) / blk, nkb = (g.kv_len + blk - 1) / blk;
  const auto qm = block_means(qk.q, qk.q_batch_stride, qk.q_row_stride, B, g.q_len, Hq, Dh, blk);
  const auto km = block_means(keys, qk.k_batch_stride, qk.k_row_stride, B, g.kv_len, Hkv, Dh, blk);
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(B * Hq * nqb));
  const int64_t first = g.q_offset / blk;
  parallel_for_each(B * Hq * nqb, [&](int64_t r) {
    const int64_t qb = r % nqb, h = (r / nqb) % Hq, b = r / (nqb * Hq);
    const int64_t past = std::min(first + qb, nkb);  // complete blocks strictly before the diagonal
    const float* q = qm.data() + ((b * Hq + h) * nqb + qb) * Dh;
    std::vector<std::pair<float, int32_t>> scored(static_cast<size_t>(past));
    for (int64_t kb = 0; kb < past; ++kb)
      scored[static_cast<size_t>(kb)] = {dot(q, km.data() + ((b * Hkv + h / (Hq / Hkv)) * nkb + kb) * Dh, Dh),
                                         static_cast<int32_t>(kb)};
    const size_t keep = static_cast<size_t>(std::min(top_k, past));
    std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(keep), scored.end(),
                      [](const auto& a, const auto& c) { return a.first > c.first || (a.first == c.first && a.second < c.second); });
    auto& row = rows[static_cast<size_t>(r)];
    for (size_t i = 0; i < keep; ++i) row.push_back(scored[i].second);
  });
  return assemble_rows(g, B, Hq, rows);
}

}  // namespace subq::attn
