// Float64 reference definitions of the common primitives, written for reading.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace subq::ref {

using Vec = std::vector<double>;

inline Vec rms_norm(const Vec& x, const Vec& w, double eps, int64_t n) {
  Vec y(x.size());
  for (size_t r = 0; r < x.size() / n; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += x[r * n + i] * x[r * n + i];
    const double inv = 1.0 / std::sqrt(ss / n + eps);
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = x[r * n + i] * inv * w[i];
  }
  return y;
}

inline Vec layer_norm(const Vec& x, const Vec& w, const Vec* b, double eps, int64_t n) {
  Vec y(x.size());
  for (size_t r = 0; r < x.size() / n; ++r) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mean += x[r * n + i];
    mean /= n;
    for (int64_t i = 0; i < n; ++i) var += (x[r * n + i] - mean) * (x[r * n + i] - mean);
    var /= n;
    for (int64_t i = 0; i < n; ++i)
      y[r * n + i] = (x[r * n + i] - mean) / std::sqrt(var + eps) * w[i] + (b ? (*b)[i] : 0.0);
  }
  return y;
}

inline Vec softmax(const Vec& x, int64_t n) {
  Vec y(x.size());
  for (size_t r = 0; r < x.size() / n; ++r) {
    double mx = -INFINITY, sum = 0;
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[r * n + i]);
    for (int64_t i = 0; i < n; ++i) sum += std::exp(x[r * n + i] - mx);
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = std::exp(x[r * n + i] - mx) / sum;
  }
  return y;
}

inline double silu(double x) { return x / (1.0 + std::exp(-x)); }
inline double softplus(double x) { return std::log1p(std::exp(x)); }

// Gated RMSNorm of rows [rows, n] (gate row r at z[r * z_stride]) in groups of `group`:
// gate_first: rms_norm_groups(x * silu(z)) * w; else rms_norm_groups(x) * w * silu(z).
inline Vec gated_rms_norm(const Vec& x, const Vec& z, const Vec& w, int64_t rows, int64_t n, int64_t z_stride,
                          int64_t group, double eps, bool gate_first) {
  Vec y(x.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < n; g += group) {
      const auto in = [&](int64_t i) { return x[r * n + i] * (gate_first ? silu(z[r * z_stride + i]) : 1.0); };
      double ss = 0;
      for (int64_t i = g; i < g + group; ++i) ss += in(i) * in(i);
      const double inv = 1.0 / std::sqrt(ss / static_cast<double>(group) + eps);
      for (int64_t i = g; i < g + group; ++i)
        y[r * n + i] = in(i) * inv * w[i] * (gate_first ? 1.0 : silu(z[r * z_stride + i]));
    }
  return y;
}

// NeoX rotate-half RoPE on x[T, H, Dh] over the first rotary_dim channels.
inline Vec rope(const Vec& x, const std::vector<int32_t>& pos, int64_t H, int64_t Dh, double theta,
                int64_t rotary_dim) {
  Vec y = x;
  const int64_t half = rotary_dim / 2;
  for (size_t t = 0; t < pos.size(); ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const double angle = pos[t] * std::pow(theta, -2.0 * i / rotary_dim);
        const size_t a = (t * H + h) * Dh + i, b = a + half;
        y[a] = x[a] * std::cos(angle) - x[b] * std::sin(angle);
        y[b] = x[b] * std::cos(angle) + x[a] * std::sin(angle);
      }
  return y;
}

}  // namespace subq::ref
