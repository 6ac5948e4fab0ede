// Float64 reference MLPs: gated (SwiGLU-style), plain, and top-k mixture of experts.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace subq::ref {

// y[T, N] = x[T, K] W[N, K]^T
inline std::vector<double> matmul_t(const std::vector<double>& x, const std::vector<double>& w, int64_t T,
                                    int64_t N, int64_t K) {
  std::vector<double> y(static_cast<size_t>(T * N), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) y[t * N + n] += x[t * K + k] * w[n * K + k];
  return y;
}

inline double act(int kind, double x) {  // 0 silu, 1 gelu_tanh, 2 relu2
  if (kind == 0) return x / (1 + std::exp(-x));
  if (kind == 1) return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
  return x > 0 ? x * x : 0.0;
}

inline std::vector<double> gated_mlp(const std::vector<double>& x, const std::vector<double>& gate,
                                     const std::vector<double>& up, const std::vector<double>& down, int64_t T,
                                     int64_t D, int64_t F, int kind) {
  auto g = matmul_t(x, gate, T, F, D), u = matmul_t(x, up, T, F, D);
  for (size_t i = 0; i < g.size(); ++i) g[i] = act(kind, g[i]) * u[i];
  return matmul_t(g, down, T, D, F);
}

inline std::vector<double> plain_mlp(const std::vector<double>& x, const std::vector<double>& up,
                                     const std::vector<double>& down, int64_t T, int64_t D, int64_t F, int kind) {
  auto h = matmul_t(x, up, T, F, D);
  for (double& v : h) v = act(kind, v);
  return matmul_t(h, down, T, D, F);
}

}  // namespace subq::ref
