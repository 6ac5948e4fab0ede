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

// NATTEN's non-causal window start along one dimension, in its branchy form (dilation
// handled through the residue class and the length of the dilated sub-sequence).
inline int64_t natten_window_start(int64_t index, int64_t length, int64_t kernel, int64_t dilation) {
  const int64_t half = kernel / 2;
  if (dilation <= 1) {
    if (index - half < 0) return 0;
    if (index + half >= length) return length - kernel;
    return index - half;
  }
  if (index - half * dilation < 0) return index % dilation;
  if (index + half * dilation >= length) {
    const int64_t residue = index % dilation;
    const int64_t full = (length / dilation) * dilation;
    const int64_t extra = length - full;
    if (residue < extra) return length - extra + residue - 2 * half * dilation;
    return full + residue - kernel * dilation;
  }
  return index - half * dilation;
}

// Naive neighborhood membership on a row-major grid (odd kernels), per dimension:
// non-causal windows from natten_window_start, causal windows the `kernel` dilated
// positions ending at the query; a stride group shares its centre query's window.
inline bool neighborhood_allows(const attn::Neighborhood& n, int64_t q, int64_t k) {
  std::vector<int64_t> qc(static_cast<size_t>(n.ndim)), kc(static_cast<size_t>(n.ndim));
  for (int d = n.ndim - 1; d >= 0; --d) {
    const size_t i = static_cast<size_t>(d);
    qc[i] = q % n.grid[i];
    kc[i] = k % n.grid[i];
    q /= n.grid[i];
    k /= n.grid[i];
  }
  for (int d = 0; d < n.ndim; ++d) {
    const size_t i = static_cast<size_t>(d);
    const int64_t L = n.grid[i], ker = n.kernel[i], dil = n.dilation[i], s = n.stride[i];
    const int64_t c = s > 1 ? std::min((qc[i] / s) * s + s / 2, L - 1) : qc[i];
    bool hit = false;
    if (n.causal[i]) {
      for (int64_t t = 0; t < ker; ++t) hit = hit || (c - t * dil >= 0 && kc[i] == c - t * dil);
    } else {
      const int64_t start = natten_window_start(c, L, ker, dil);
      for (int64_t t = 0; t < ker; ++t) hit = hit || kc[i] == start + t * dil;
    }
    if (!hit) return false;
  }
  return true;
}

}  // namespace subq::ref
