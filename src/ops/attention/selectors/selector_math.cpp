// Highway compiles the dot product and the exponentials once per SIMD target; the rest is
// plain C++.
#include <cmath>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/attention/selectors/selector_math.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/dot/dot-inl.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace subq::attn::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

float DotF32(const float* a, const float* b, size_t n) {
  return hn::Dot::Compute<0>(hn::ScalableTag<float>(), a, b, n);
}

double ExpShiftedF32(const float* x, size_t n, float scale, float shift, float* out) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const auto vscale = hn::Set(d, scale), vshift = hn::Set(d, shift);
  auto sum = hn::Zero(d);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto e = hn::Exp(d, hn::MulSub(hn::LoadU(d, x + i), vscale, vshift));
    if (out) hn::StoreU(e, d, out + i);
    sum = hn::Add(sum, e);
  }
  double total = hn::GetLane(hn::SumOfLanes(d, sum));
  for (; i < n; ++i) {
    const float e = std::exp(x[i] * scale - shift);
    if (out) out[i] = e;
    total += e;
  }
  return total;
}

}  // namespace subq::attn::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "src/ops/attention/selectors/selector_math.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "src/core/parallel.h"
#include "src/ops/attention/selectors/block_geometry.h"
#include "subq/tensor.h"

namespace subq::attn {

std::vector<float> block_means(const float* x, int64_t batch_stride, int64_t row_stride, int64_t batch, int64_t rows,
                               int64_t heads, int64_t dim, int64_t block) {
  const int64_t nb = (rows + block - 1) / block;
  std::vector<float> out(static_cast<size_t>(batch * heads * nb * dim), 0.f);
  parallel_for_each(batch * nb, [&](int64_t item) {
    const int64_t b = item / nb, blk = item % nb;
    const int64_t r0 = blk * block, r1 = std::min(rows, r0 + block);
    const float inv = 1.f / static_cast<float>(r1 - r0);
    // Row by row, all heads at once: each token's heads are one contiguous run, which the
    // prefetchers follow; head by head, the rows sit a token apart.
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t h = 0; h < heads; ++h) {
        float* o = out.data() + ((b * heads + h) * nb + blk) * dim;
        const float* src = x + b * batch_stride + r * row_stride + h * dim;
        for (int64_t d = 0; d < dim; ++d) o[d] += src[d];
      }
    for (int64_t h = 0; h < heads; ++h) {
      float* o = out.data() + ((b * heads + h) * nb + blk) * dim;
      for (int64_t d = 0; d < dim; ++d) o[d] *= inv;
    }
  });
  return out;
}

HWY_EXPORT(DotF32);

// Selectors score many short vectors (head dims of 64-256): one vector FMA per lane group
// instead of a serial chain of adds, which made MoBA's block scoring a quarter of its time
// at 128K.
float dot(const float* a, const float* b, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(DotF32)(a, b, static_cast<size_t>(n));
}

HWY_EXPORT(ExpShiftedF32);

double exp_shifted(const float* x, int64_t n, float scale, float shift, float* out) {
  return HWY_DYNAMIC_DISPATCH(ExpShiftedF32)(x, static_cast<size_t>(n), scale, shift, out);
}

std::vector<int32_t> keep_until_mass(const std::vector<double>& scores, double mass) {
  std::vector<int32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return scores[static_cast<size_t>(a)] > scores[static_cast<size_t>(b)] ||
           (scores[static_cast<size_t>(a)] == scores[static_cast<size_t>(b)] && a < b);
  });
  const double total = std::accumulate(scores.begin(), scores.end(), 0.0);
  std::vector<int32_t> kept;
  double acc = 0;
  for (int32_t i : order) {
    if (!kept.empty() && acc >= mass * total) break;
    kept.push_back(i);
    acc += scores[static_cast<size_t>(i)];
  }
  return kept;
}

void check_flexprefill_parameters(double gamma) {
  if (!(gamma > 0 && gamma <= 1)) throw Error("flexprefill_mask: gamma must be in (0, 1], found " + std::to_string(gamma));
}

void check_xattention_parameters(int64_t block, double threshold, int64_t stride) {
  if (stride < 1 || block % stride != 0)
    throw Error("xattention_mask: stride must divide the block size " + std::to_string(block) + ", found " +
                std::to_string(stride));
  if (!(threshold > 0 && threshold <= 1))
    throw Error("xattention_mask: threshold must be in (0, 1], found " + std::to_string(threshold));
}

void check_dynamic_inputs(const MaskGeometry& g, const AttentionArgs& qk, const char* who) {
  check_aligned_blocks(g, who);
  const std::string w = who;
  if (!qk.q || !qk.k) throw Error(w + ": needs the queries and keys (q and k are null)");
  if (qk.q_len != g.q_len || qk.kv_len != g.kv_len)
    throw Error(w + ": q/k have lengths " + std::to_string(qk.q_len) + "/" + std::to_string(qk.kv_len) +
                " but the mask is for " + std::to_string(g.q_len) + "/" + std::to_string(g.kv_len));
  if (qk.kv_heads < 1 || qk.q_heads % qk.kv_heads != 0 || qk.head_dim < 1)
    throw Error(w + ": q_heads must be a multiple of kv_heads and head_dim >= 1");
  if (g.q_offset + g.q_len > g.kv_len)
    throw Error(w + ": causal prefill needs kv_len >= q_offset + q_len, found kv_len " + std::to_string(g.kv_len));
}

BlockMask assemble_rows(const MaskGeometry& g, int64_t batch, int64_t heads, std::vector<std::vector<int32_t>>& rows) {
  ElementRule rule;
  rule.causal = true;
  BlockMaskBuilder b(batch, heads, g.q_len, g.kv_len, g.q_block, g.k_block, g.q_offset, rule);
  const int64_t nqb = (g.q_len + g.q_block - 1) / g.q_block;
  const int64_t first = g.q_offset / g.q_block;
  for (size_t r = 0; r < rows.size(); ++r) {
    rows[r].push_back(static_cast<int32_t>(first + static_cast<int64_t>(r) % nqb));
    b.add_row(rows[r]);
  }
  return b.finish();
}

}  // namespace subq::attn
#endif  // HWY_ONCE
