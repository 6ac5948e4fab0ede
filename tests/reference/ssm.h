// Float64 reference definitions of the state-space family (S), written for reading.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/reference/conv.h"

namespace subq::ref {

using Vec = std::vector<double>;

inline double softplus(double v) { return v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)); }

// Selective scan (Mamba-1). x, dt, z: [B, T, D]; A: [D, N]; Bm, Cm: [B, T, G, N];
// dt_bias, Dskip, z may be empty. h: [B, D, N], read as the initial state and left holding
// the final state. Returns y[B, T, D].
inline Vec selective_scan(const Vec& x, const Vec& dt, const Vec& dt_bias, bool dt_softplus, const Vec& A,
                          const Vec& Bm, const Vec& Cm, const Vec& Dskip, const Vec& z, Vec& h, int64_t B, int64_t T,
                          int64_t D, int64_t N, int64_t G) {
  Vec y(static_cast<size_t>(B * T * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d) {
      const int64_t g = d / (D / G);
      for (int64_t t = 0; t < T; ++t) {
        const size_t i = static_cast<size_t>((b * T + t) * D + d);
        double delta = dt[i] + (dt_bias.empty() ? 0.0 : dt_bias[d]);
        if (dt_softplus) delta = softplus(delta);
        double out = 0;
        for (int64_t n = 0; n < N; ++n) {
          double& s = h[(b * D + d) * N + n];
          const size_t bc = static_cast<size_t>(((b * T + t) * G + g) * N + n);
          s = std::exp(delta * A[d * N + n]) * s + delta * Bm[bc] * x[i];
          out += Cm[bc] * s;
        }
        if (!Dskip.empty()) out += Dskip[d] * x[i];
        if (!z.empty()) out *= silu(z[i]);
        y[i] = out;
      }
    }
  return y;
}

}  // namespace subq::ref
