#include <algorithm>
#include <cmath>
#include <numeric>

#include "src/core/parallel.h"
#include "src/ops/attention/selectors/dynamic_selectors.h"
#include "src/ops/attention/selectors/selector_math.h"
#include "src/ops/common/gemm.h"
#include "subq/tensor.h"

namespace subq::attn {
namespace {

// Keys scored per GEMM for the last query block's exact attention.
constexpr int64_t kKeyChunk = 8192;

// softmax over x (in place), in double.
void softmax_in_place(std::vector<double>& x) {
  if (x.empty()) return;
  const double mx = *std::max_element(x.begin(), x.end());
  double sum = 0;
  for (double& v : x) sum += (v = std::exp(v - mx));
  for (double& v : x) v /= sum;
}

// Jensen-Shannon distance sqrt(JS(p || q)) of two distributions (natural log).
double js_distance(const std::vector<double>& p, const std::vector<double>& q) {
  double js = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double m = 0.5 * (p[i] + q[i]);
    if (p[i] > 0) js += 0.5 * p[i] * std::log(p[i] / m);
    if (q[i] > 0) js += 0.5 * q[i] * std::log(q[i] / m);
  }
  return std::sqrt(std::max(js, 0.0));
}

}  // namespace

BlockMask flexprefill_mask(const MaskGeometry& g, const AttentionArgs& qk, double gamma, double tau) {
  check_dynamic_inputs(g, qk, "flexprefill_mask");
  const float* keys = qk.f32_keys("flexprefill_mask");
  check_flexprefill_parameters(gamma);
  const int64_t B = qk.batch, Hq = qk.q_heads, Hkv = qk.kv_heads, Dh = qk.head_dim, blk = g.q_block;
  const int64_t group = Hq / Hkv;
  const int64_t nqb = (g.q_len + blk - 1) / blk, nkb = (g.kv_len + blk - 1) / blk;
  const int64_t first = g.q_offset / blk;
  const auto qm = block_means(qk.q, qk.q_batch_stride, qk.q_row_stride, B, g.q_len, Hq, Dh, blk);
  const auto km = block_means(keys, qk.k_batch_stride, qk.k_row_stride, B, g.kv_len, Hkv, Dh, blk);
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(B * Hq * nqb));
  const double scale = qk.scale;
  parallel_for_each(B * Hq, [&](int64_t bh) {
    const int64_t b = bh / Hq, h = bh % Hq;
    const float* kmean = km.data() + (b * Hkv + h / group) * nkb * Dh;
    const float* qmean = qm.data() + bh * nqb * Dh;
    auto pooled = [&](int64_t qb) {  // softmax over the blocks up to the diagonal
      std::vector<double> s(static_cast<size_t>(std::min(first + qb + 1, nkb)));
      for (size_t kb = 0; kb < s.size(); ++kb)
        s[kb] = scale * dot(qmean + qb * Dh, kmean + static_cast<int64_t>(kb) * Dh, Dh);
      softmax_in_place(s);
      return s;
    };
    // Exact attention of the last query block's rows (the representative queries), a
    // chunk of keys at a time (bounded memory at any length): one GEMM per chunk scores
    // every row, a first sweep finds each row's max and sum, a second adds the weights.
    const int64_t last = nqb - 1, i0 = last * blk, rows_n = g.q_len - i0;
    const int64_t length = g.q_offset + g.q_len;  // keys the last block's rows may see
    const float* q_rows = qk.q + b * qk.q_batch_stride + i0 * qk.q_row_stride + h * Dh;
    const float* k_rows = keys + b * qk.k_batch_stride + (h / group) * Dh;
    std::vector<float> scores(static_cast<size_t>(rows_n * std::min(kKeyChunk, length)));
    const auto sweep = [&](const auto& visit) {
      for (int64_t c0 = 0; c0 < length; c0 += kKeyChunk) {
        const int64_t cn = std::min(kKeyChunk, length - c0);
        ops::gemm_xwt(rows_n, cn, Dh, q_rows, qk.q_row_stride, k_rows + c0 * qk.k_row_stride, DType::f32,
                      qk.k_row_stride, scores.data(), cn, false);
        for (int64_t r = 0; r < rows_n; ++r) {
          const int64_t seen = std::min(cn, g.q_offset + i0 + r + 1 - c0);  // keys j <= the row's position
          if (seen > 0) visit(r, c0, scores.data() + r * cn, seen);
        }
      }
    };
    std::vector<float> row_max(static_cast<size_t>(rows_n), -INFINITY);
    std::vector<double> row_sum(static_cast<size_t>(rows_n), 0.0);
    sweep([&](int64_t r, int64_t, float* s, int64_t seen) {
      float& m = row_max[static_cast<size_t>(r)];
      const float chunk_max = static_cast<float>(scale) * *std::max_element(s, s + seen);
      const float m_new = std::max(m, chunk_max);
      double& sum = row_sum[static_cast<size_t>(r)];
      sum = sum * std::exp(static_cast<double>(m) - m_new) + exp_shifted(s, seen, static_cast<float>(scale), m_new, nullptr);
      m = m_new;
    });
    const int64_t last_pos = length - 1;
    std::vector<double> vertical(static_cast<size_t>(last_pos + 1), 0.0), slash(static_cast<size_t>(last_pos + 1), 0.0);
    std::vector<double> exact_blocks(static_cast<size_t>(std::min(first + last + 1, nkb)), 0.0);
    sweep([&](int64_t r, int64_t c0, float* s, int64_t seen) {
      const int64_t p = g.q_offset + i0 + r;
      exp_shifted(s, seen, static_cast<float>(scale), row_max[static_cast<size_t>(r)], s);
      const double norm = 1.0 / (row_sum[static_cast<size_t>(r)] * static_cast<double>(rows_n));
      for (int64_t j = c0; j < c0 + seen; ++j) {
        const double w = s[j - c0] * norm;
        vertical[static_cast<size_t>(j)] += w;
        slash[static_cast<size_t>(p - j)] += w;
        exact_blocks[static_cast<size_t>(j / blk)] += w;
      }
    });
    const bool query_aware = js_distance(exact_blocks, pooled(last)) < tau;
    if (query_aware) {
      for (int64_t qb = 0; qb < nqb; ++qb) rows[static_cast<size_t>(bh * nqb + qb)] = keep_until_mass(pooled(qb), gamma);
      return;
    }
    // The kept verticals and slashes as prefix counts (prefix[i + 1]: kept indices <= i),
    // so that each (row, key block) asks in O(1) whether one reaches the block.
    const auto prefix_of = [&](const std::vector<double>& mass) {
      std::vector<int32_t> prefix(mass.size() + 1, 0);
      for (int32_t i : keep_until_mass(mass, gamma)) prefix[static_cast<size_t>(i) + 1] = 1;
      std::partial_sum(prefix.begin(), prefix.end(), prefix.begin());
      return prefix;
    };
    const auto verticals = prefix_of(vertical), slashes = prefix_of(slash);
    const auto any = [](const std::vector<int32_t>& prefix, int64_t lo, int64_t hi) {  // a kept index in [lo, hi]
      return lo <= hi && prefix[static_cast<size_t>(hi) + 1] > prefix[static_cast<size_t>(lo)];
    };
    for (int64_t qb = 0; qb < nqb; ++qb) {
      auto& row = rows[static_cast<size_t>(bh * nqb + qb)];
      const int64_t p0 = g.q_offset + qb * blk, p1 = g.q_offset + std::min(g.q_len, (qb + 1) * blk) - 1;
      for (int64_t kb = 0, k0 = 0; kb <= first + qb; ++kb, k0 += blk)
        // A vertical j <= p1 in the block, or a slash d with p - d in the block for a p
        // in [p0, p1]: d in [p0 - k0 - blk + 1, p1 - k0].
        if (any(verticals, k0, std::min(k0 + blk, p1 + 1) - 1) ||
            any(slashes, std::max<int64_t>(0, p0 - k0 - blk + 1), p1 - k0))
          row.push_back(static_cast<int32_t>(kb));
    }
  });
  return assemble_rows(g, B, Hq, rows);
}

}  // namespace subq::attn
