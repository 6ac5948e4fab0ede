// Float64 reference definitions of the convolutions (family C and Mamba's short conv),
// written for reading.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace subq::ref {

using Vec = std::vector<double>;

inline double silu(double v) { return v / (1.0 + std::exp(-v)); }

// Causal depthwise conv over x[B, T, D] with filter w[D, W], bias[D] (may be empty) and
// left context ctx[B, W-1, D] (may be empty: zeros). Returns y[B, T, D].
inline Vec causal_conv1d(const Vec& x, int64_t B, int64_t T, int64_t D, const Vec& w, int64_t W, const Vec& bias,
                         const Vec& ctx, bool apply_silu) {
  Vec y(static_cast<size_t>(B * T * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t d = 0; d < D; ++d) {
        double acc = bias.empty() ? 0.0 : bias[d];
        for (int64_t k = 0; k < W; ++k) {
          const int64_t s = t - (W - 1) + k;
          double in = 0;
          if (s >= 0) in = x[(b * T + s) * D + d];
          else if (!ctx.empty()) in = ctx[(b * (W - 1) + (W - 1) + s) * D + d];
          acc += w[d * W + k] * in;
        }
        y[(b * T + t) * D + d] = apply_silu ? silu(acc) : acc;
      }
  return y;
}

// Causal convolution of each row of u[R, T] with the filter k[R % K_rows, L]:
//   y[r, t] = sum_{j <= t, j < L} k[j] * u[r, t - j].
inline Vec causal_conv(const Vec& u, int64_t R, int64_t T, const Vec& k, int64_t K_rows, int64_t L) {
  Vec y(static_cast<size_t>(R * T), 0.0);
  for (int64_t r = 0; r < R; ++r) {
    const double* kr = &k[static_cast<size_t>((r % K_rows) * L)];
    for (int64_t t = 0; t < T; ++t) {
      double acc = 0;
      for (int64_t j = 0; j <= t && j < L; ++j) acc += kr[j] * u[r * T + t - j];
      y[r * T + t] = acc;
    }
  }
  return y;
}

}  // namespace subq::ref
