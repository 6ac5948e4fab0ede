// One row of attention scores against a key block, as the flash executor (flash.cpp) and
// split-KV decode (decode.cpp) both finish it: soft-cap, the element rule, and the online
// softmax step. Included once per Highway target (the usual -inl.h guard toggle), inside
// each file's HWY_NAMESPACE.
#if defined(SUBQ_ATTN_SCORE_ROWS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SUBQ_ATTN_SCORE_ROWS_INL_H_
#undef SUBQ_ATTN_SCORE_ROWS_INL_H_
#else
#define SUBQ_ATTN_SCORE_ROWS_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "src/ops/attention/block_mask.h"

HWY_BEFORE_NAMESPACE();
namespace subq::attn::HWY_NAMESPACE {
namespace score_rows {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
}  // namespace score_rows

HWY_INLINE void SoftcapRow(float* HWY_RESTRICT s, int64_t cols, float cap) {
  using namespace score_rows;
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const VF vc = hn::Set(d, cap), inv = hn::Set(d, 1.f / cap);
  for (int64_t j = 0; j < cols; j += N) hn::Store(hn::Mul(vc, hn::Tanh(d, hn::Mul(hn::Load(d, s + j), inv))), d, s + j);
}

// Sets to -inf the scores of row srow (query position qp, cols entries) that the rule
// forbids or that lie past the block's kn keys; the block's first key slot is k0, slot j
// has position key_positions[j] (or j). `full`: the rule allows every pair of the block
// (ElementRule::covers), so only the padding is masked.
HWY_INLINE void MaskRow(float* HWY_RESTRICT srow, int64_t cols, int64_t kn, int64_t k0, int64_t qp, bool full,
                        const ElementRule& rule, const int32_t* key_positions, int64_t kv_len) {
  const float ninf = -std::numeric_limits<float>::infinity();
  int64_t lo, hi, sink_hi;
  if (full) {
    std::fill(srow + kn, srow + cols, ninf);
  } else if (!key_positions && rule.key_ranges(qp, kv_len, lo, hi, sink_hi)) {
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t k = k0 + j;
      if (j >= kn || ((k < lo || k > hi) && k > sink_hi)) srow[j] = ninf;
    }
  } else {
    for (int64_t j = 0; j < cols; ++j)
      if (j >= kn || !rule.allows(qp, key_positions ? key_positions[k0 + j] : k0 + j)) srow[j] = ninf;
  }
}

// Turns one row of scores into probabilities against the running max m and sum l;
// returns alpha = exp(m_old - m_new), the factor the row's accumulator is rescaled by.
HWY_INLINE float SoftmaxRow(float* HWY_RESTRICT s, int64_t cols, float& m, float& l) {
  using namespace score_rows;
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const VF neg_inf = hn::Set(d, -std::numeric_limits<float>::infinity());
  VF vmax = neg_inf;
  for (int64_t j = 0; j < cols; j += N) vmax = hn::Max(vmax, hn::Load(d, s + j));
  const float row_max = hn::GetLane(hn::MaxOfLanes(d, vmax));
  const float m_new = std::max(m, row_max);
  if (m_new == -std::numeric_limits<float>::infinity()) {
    std::fill_n(s, cols, 0.f);  // nothing allowed yet: keep m = -inf, l = 0
    return 1.f;
  }
  const float alpha = m == -std::numeric_limits<float>::infinity() ? 0.f : std::exp(m - m_new);
  const VF vm = hn::Set(d, m_new);
  const VF lowest = hn::Set(d, -100.f);
  VF vsum = hn::Zero(d);
  for (int64_t j = 0; j < cols; j += N) {
    const VF x = hn::Load(d, s + j);
    // Masked entries are -inf: their weight is exactly 0, not exp(-100).
    const VF e = hn::IfThenZeroElse(hn::Eq(x, neg_inf), hn::Exp(d, hn::Max(hn::Sub(x, vm), lowest)));
    hn::Store(e, d, s + j);
    vsum = hn::Add(vsum, e);
  }
  l = l * alpha + hn::GetLane(hn::SumOfLanes(d, vsum));
  m = m_new;
  return alpha;
}

}  // namespace subq::attn::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // SUBQ_ATTN_SCORE_ROWS_INL_H_
