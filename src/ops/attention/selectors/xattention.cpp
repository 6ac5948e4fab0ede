#include <algorithm>
#include <cmath>
#include <string>

#include "src/core/parallel.h"
#include "src/ops/attention/selectors/dynamic_selectors.h"
#include "src/ops/attention/selectors/selector_math.h"
#include "src/ops/common/gemm.h"
#include "subq/tensor.h"

namespace subq::attn {

// Row r of the reshaped queries is q[r*s + s-1], ..., q[r*s] concatenated, row c of the
// reshaped keys k[c*s], ..., k[c*s + s-1]; their dot product sums the products on one
// antidiagonal of the s x s tile (r, c), so one GEMM scores every tile's antidiagonal.
BlockMask xattention_mask(const MaskGeometry& g, const AttentionArgs& qk, double threshold, int64_t stride) {
  check_dynamic_inputs(g, qk, "xattention_mask");
  const float* keys = qk.f32_keys("xattention_mask");
  const int64_t blk = g.q_block, s = stride;
  check_xattention_parameters(blk, threshold, stride);
  const int64_t B = qk.batch, Hq = qk.q_heads, Hkv = qk.kv_heads, Dh = qk.head_dim, group = Hq / Hkv;
  const int64_t nqb = (g.q_len + blk - 1) / blk, nkb = (g.kv_len + blk - 1) / blk;
  const int64_t first = g.q_offset / blk;
  const int64_t nr = (g.q_len + s - 1) / s, nc = (g.kv_len + s - 1) / s, width = s * Dh;
  const int64_t per_block = blk / s;           // reshaped rows per block
  const int64_t chunk_blocks = 8;              // query blocks scored per GEMM
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(B * Hq * nqb));
  std::vector<float> qs(static_cast<size_t>(nr * width)), ks(static_cast<size_t>(nc * width));
  std::vector<float> scores(static_cast<size_t>(chunk_blocks * per_block * nc));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t t = 0; t < s; ++t) {
          const int64_t i = r * s + s - 1 - t;
          float* dst = qs.data() + r * width + t * Dh;
          if (i < g.q_len) std::copy_n(qk.q + b * qk.q_batch_stride + i * qk.q_row_stride + h * Dh, Dh, dst);
          else std::fill_n(dst, Dh, 0.f);
        }
      for (int64_t c = 0; c < nc; ++c)
        for (int64_t t = 0; t < s; ++t) {
          const int64_t j = c * s + t;
          float* dst = ks.data() + c * width + t * Dh;
          if (j < g.kv_len) std::copy_n(keys + b * qk.k_batch_stride + j * qk.k_row_stride + (h / group) * Dh, Dh, dst);
          else std::fill_n(dst, Dh, 0.f);
        }
      for (int64_t qb0 = 0; qb0 < nqb; qb0 += chunk_blocks) {
        const int64_t qb1 = std::min(nqb, qb0 + chunk_blocks);
        const int64_t r0 = qb0 * per_block, r1 = std::min(nr, qb1 * per_block);
        const int64_t cols = std::min(nc, (g.q_offset / s) + r1);  // columns any row here may see
        ops::gemm_xwt(r1 - r0, cols, width, qs.data() + r0 * width, width, ks.data(), DType::f32, width,
                      scores.data(), cols, false);
        std::vector<double> block_score, logits;
        for (int64_t qb = qb0; qb < qb1; ++qb) {
          const int64_t aq = first + qb;
          block_score.assign(static_cast<size_t>(std::min(aq + 1, nkb)), 0.0);
          for (int64_t r = qb * per_block; r < std::min(nr, (qb + 1) * per_block); ++r) {
            const int64_t allowed = std::min(cols, g.q_offset / s + r + 1);
            const float* srow = scores.data() + (r - r0) * cols;
            logits.assign(static_cast<size_t>(allowed), 0.0);
            double mx = -INFINITY, sum = 0;
            for (int64_t c = 0; c < allowed; ++c)
              mx = std::max(mx, logits[static_cast<size_t>(c)] = qk.scale * srow[c] / static_cast<double>(s));
            for (double& l : logits) sum += (l = std::exp(l - mx));
            for (int64_t c = 0; c < allowed; ++c)
              block_score[static_cast<size_t>(std::min(c * s / blk, aq))] += logits[static_cast<size_t>(c)] / sum;
          }
          rows[static_cast<size_t>((b * Hq + h) * nqb + qb)] = keep_until_mass(block_score, threshold);
        }
      }
    }
  return assemble_rows(g, B, Hq, rows);
}

}  // namespace subq::attn
