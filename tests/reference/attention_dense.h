// Float64 reference for dense softmax attention with grouped-query heads, written for
// reading: o[b, i, h] = sum_j softmax_j(q[b, i, h] . k[b, j, h/g] * scale) v[b, j, h/g].
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace subq::ref {

// q[B, Tq, H, D], k/v[B, Tk, Hkv, D] row-major. Causal: query i sees keys
// j <= i + (Tk - Tq); a query that sees no key has a zero output.
inline std::vector<double> attention(const std::vector<double>& q, const std::vector<double>& k,
                                     const std::vector<double>& v, int64_t B, int64_t Tq, int64_t Tk, int64_t H,
                                     int64_t Hkv, int64_t D, bool causal, double scale) {
  std::vector<double> o(static_cast<size_t>(B * Tq * H * D), 0.0);
  const int64_t group = H / Hkv;
  std::vector<double> w(static_cast<size_t>(Tk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t last = causal ? std::min(Tk - 1, i + Tk - Tq) : Tk - 1;
        if (last < 0) continue;
        const double* qi = &q[static_cast<size_t>(((b * Tq + i) * H + h) * D)];
        double mx = -INFINITY;
        for (int64_t j = 0; j <= last; ++j) {
          const double* kj = &k[static_cast<size_t>(((b * Tk + j) * Hkv + h / group) * D)];
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += qi[d] * kj[d];
          w[static_cast<size_t>(j)] = dot * scale;
          mx = std::max(mx, w[static_cast<size_t>(j)]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= last; ++j) sum += (w[static_cast<size_t>(j)] = std::exp(w[static_cast<size_t>(j)] - mx));
        double* oi = &o[static_cast<size_t>(((b * Tq + i) * H + h) * D)];
        for (int64_t j = 0; j <= last; ++j) {
          const double* vj = &v[static_cast<size_t>(((b * Tk + j) * Hkv + h / group) * D)];
          for (int64_t d = 0; d < D; ++d) oi[d] += w[static_cast<size_t>(j)] / sum * vj[d];
        }
      }
  return o;
}

}  // namespace subq::ref
