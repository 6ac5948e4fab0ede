// Float64 reference MLPs: gated (SwiGLU-style), plain, and group-limited expert routing.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>
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

// One token's routes under DeepSeek-V3 / Nemotron-H routing: (expert, weight) pairs.
// Experts are chosen by sigmoid(logit) + bias, within the topk_group groups whose two
// best choice values sum highest; each chosen expert is weighted by its sigmoid score.
inline std::vector<std::pair<int64_t, double>> group_limited_routes(const std::vector<double>& logits,
                                                                    const std::vector<double>& bias, int64_t n_group,
                                                                    int64_t topk_group, int64_t top_k, bool normalize,
                                                                    double scale) {
  const int64_t E = static_cast<int64_t>(logits.size()), G = E / n_group;
  std::vector<double> score(static_cast<size_t>(E)), choice(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    score[e] = 1 / (1 + std::exp(-logits[e]));
    choice[e] = score[e] + bias[e];
  }
  std::vector<double> group_score;
  for (int64_t g = 0; g < n_group; ++g) {
    std::vector<double> c(choice.begin() + g * G, choice.begin() + (g + 1) * G);
    std::sort(c.rbegin(), c.rend());
    group_score.push_back(c[0] + c[1]);
  }
  std::vector<int64_t> groups(static_cast<size_t>(n_group));
  std::iota(groups.begin(), groups.end(), 0);
  std::sort(groups.begin(), groups.end(), [&](int64_t a, int64_t b) { return group_score[a] > group_score[b]; });
  std::vector<int64_t> eligible;
  for (int64_t i = 0; i < topk_group; ++i)
    for (int64_t e = groups[i] * G; e < (groups[i] + 1) * G; ++e) eligible.push_back(e);
  std::sort(eligible.begin(), eligible.end(), [&](int64_t a, int64_t b) { return choice[a] > choice[b]; });
  double sum = 0;
  for (int64_t i = 0; i < top_k; ++i) sum += score[eligible[i]];
  std::vector<std::pair<int64_t, double>> routes;
  for (int64_t i = 0; i < top_k; ++i)
    routes.push_back({eligible[i], score[eligible[i]] / (normalize ? sum + 1e-20 : 1.0) * scale});
  return routes;
}

}  // namespace subq::ref
