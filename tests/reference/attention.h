// Float64 definitions for the attention family, written for reading, not speed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "src/ops/attention/block_mask.h"

namespace subq::ref {

// allowed(b, h, i, j): may query row i of head h attend to key slot j.
using PairMask = std::function<bool(int64_t b, int64_t h, int64_t i, int64_t j)>;

// Masked softmax attention. q, o: [B, Tq, Hq, Dh]; k, v: [B, Tk, Hkv, Dh]; query head h
// uses key/value head h / (Hq / Hkv). logit = q.k * scale, then softcap * tanh(logit /
// softcap) when softcap > 0. A row with no allowed key outputs 0.
inline std::vector<double> attention(const std::vector<double>& q, const std::vector<double>& k,
                                     const std::vector<double>& v, int64_t B, int64_t Tq, int64_t Tk, int64_t Hq,
                                     int64_t Hkv, int64_t Dh, double scale, double softcap, const PairMask& allowed) {
  std::vector<double> o(static_cast<size_t>(B * Tq * Hq * Dh), 0.0);
  const int64_t group = Hq / Hkv;
  std::vector<double> logits(static_cast<size_t>(Tk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        const double* qi = &q[static_cast<size_t>(((b * Tq + i) * Hq + h) * Dh)];
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Tk; ++j) {
          logits[static_cast<size_t>(j)] = -std::numeric_limits<double>::infinity();
          if (!allowed(b, h, i, j)) continue;
          const double* kj = &k[static_cast<size_t>(((b * Tk + j) * Hkv + h / group) * Dh)];
          double dot = 0;
          for (int64_t x = 0; x < Dh; ++x) dot += qi[x] * kj[x];
          double logit = dot * scale;
          if (softcap > 0) logit = softcap * std::tanh(logit / softcap);
          logits[static_cast<size_t>(j)] = logit;
          mx = std::max(mx, logit);
        }
        if (mx == -std::numeric_limits<double>::infinity()) continue;
        double sum = 0;
        for (auto& l : logits) {
          l = std::exp(l - mx);
          sum += l;
        }
        double* oi = &o[static_cast<size_t>(((b * Tq + i) * Hq + h) * Dh)];
        for (int64_t j = 0; j < Tk; ++j) {
          const double p = logits[static_cast<size_t>(j)] / sum;
          if (p == 0) continue;
          const double* vj = &v[static_cast<size_t>(((b * Tk + j) * Hkv + h / group) * Dh)];
          for (int64_t x = 0; x < Dh; ++x) oi[x] += p * vj[x];
        }
      }
  return o;
}

// The element mask a BlockMask describes: j's block listed for i's block, and the rule
// allows the pair at their positions.
inline bool block_mask_allows(const attn::BlockMask& m, int64_t b, int64_t h, int64_t i, int64_t j,
                              const int32_t* key_positions = nullptr) {
  const auto row = m.row(b, h, i / m.q_block);
  const int32_t kb = static_cast<int32_t>(j / m.k_block);
  if (!std::binary_search(row.begin(), row.end(), kb)) return false;
  return m.rule.allows(m.q_offset + i, key_positions ? key_positions[j] : j);
}

// NATTEN's membership test along one dimension, in the form of its FlexAttention mask:
// both coordinates in the same dilation group, then inside the group the leader of the
// query's stride group (centre query, right of centre for even strides; causal: the last
// query) and, for non-causal windows, the leader moved inward until the window of
// kernel / 2 keys left and kernel / 2 + kernel % 2 - 1 right fits.
inline bool natten_dim_allows(int64_t qc, int64_t kc, int64_t L, int64_t kernel, int64_t dilation, int64_t stride,
                              bool causal) {
  if (qc % dilation != kc % dilation) return false;
  const int64_t group = qc % dilation, qd = qc / dilation, kd = kc / dilation;
  const int64_t len = L / dilation + 1 - (group + dilation - L % dilation) / dilation;  // the group's positions
  if (causal) {
    const int64_t leader = std::min(qd / stride * stride + stride - 1, len - 1);
    return kd <= qd && leader - kd < kernel;
  }
  const int64_t leader = std::min(qd / stride * stride + stride / 2, len - 1);
  const int64_t left = kernel / 2, right = kernel / 2 + kernel % 2 - 1;
  const int64_t centre = std::clamp(leader, left, len - 1 - right);
  return (kd <= centre && centre - kd <= left) || (kd >= centre && kd - centre <= right);
}

// Naive neighborhood membership on a row-major grid: every dimension allows the pair.
inline bool neighborhood_allows(const attn::Neighborhood& n, int64_t q, int64_t k) {
  for (int d = n.ndim - 1; d >= 0; --d) {
    const size_t i = static_cast<size_t>(d);
    if (!natten_dim_allows(q % n.grid[i], k % n.grid[i], n.grid[i], n.kernel[i], n.dilation[i], n.stride[i],
                           n.causal[i]))
      return false;
    q /= n.grid[i];
    k /= n.grid[i];
  }
  return true;
}

}  // namespace subq::ref
