// Float64 naive Mamba-2 mixer (HF Mamba2Mixer torch_forward semantics), token by token:
// in_proj -> split z | xBC | dt -> causal depthwise conv + SiLU over xBC -> dt = clamp(
// softplus(dt + dt_bias)) -> per head h (group g = h / (H / G)):
//   state[p, n] = exp(dt A_h) state[p, n] + dt x[p] B[n],  y[p] = sum_n C[n] state[p, n] + D_h x[p]
// -> gated RMSNorm in groups of I / G (gate first) -> out_proj.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "src/mixers/mamba2_mixer.h"
#include "tests/support/random.h"

namespace subq::test {

struct Mamba2RefWeights {
  std::vector<double> in_w, in_b, conv_w, conv_b, dt_bias, A_log, D, norm_w, out_w, out_b;
};

inline Mamba2RefWeights mamba2_ref_weights(const mixers::Mamba2Weights& w) {
  auto d = [](const Tensor& t) { return t.defined() ? to_double(t) : std::vector<double>{}; };
  return {d(w.in_proj_weight), d(w.in_proj_bias), d(w.conv1d_weight), d(w.conv1d_bias), d(w.dt_bias),
          d(w.A_log),          d(w.D),            d(w.norm_weight),   d(w.out_proj_weight), d(w.out_proj_bias)};
}

// y = W x + b for W [n, k] row-major.
inline std::vector<double> ref_linear(const std::vector<double>& W, const std::vector<double>& b,
                                      const double* x, int64_t n, int64_t k) {
  std::vector<double> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double acc = b.empty() ? 0.0 : b[static_cast<size_t>(i)];
    for (int64_t j = 0; j < k; ++j) acc += W[static_cast<size_t>(i * k + j)] * x[j];
    y[static_cast<size_t>(i)] = acc;
  }
  return y;
}

inline double ref_silu(double v) { return v / (1 + std::exp(-v)); }
inline double ref_softplus(double v) { return v > 20 ? v : std::log1p(std::exp(v)); }

inline std::vector<double> mamba2_reference(const mixers::Mamba2Config& c, const Mamba2RefWeights& w,
                                            const std::vector<double>& x, int64_t B, int64_t T) {
  const int64_t D = c.hidden_size, I = c.intermediate_size(), H = c.num_heads, P = c.head_dim, G = c.n_groups,
                N = c.state_size, K = c.conv_kernel, CD = c.conv_dim(), PS = c.in_proj_size();
  std::vector<double> y(static_cast<size_t>(B * T * D));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<std::vector<double>> xbc_in;  // pre-conv inputs of this sequence
    std::vector<double> h(static_cast<size_t>(H * P * N), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const auto proj = ref_linear(w.in_w, w.in_b, &x[static_cast<size_t>((b * T + t) * D)], PS, D);
      xbc_in.emplace_back(proj.begin() + I, proj.begin() + I + CD);
      std::vector<double> xbc(static_cast<size_t>(CD));
      for (int64_t ch = 0; ch < CD; ++ch) {
        double acc = w.conv_b.empty() ? 0.0 : w.conv_b[static_cast<size_t>(ch)];
        for (int64_t j = 0; j < K; ++j) {
          const int64_t src = t - (K - 1) + j;
          if (src >= 0) acc += w.conv_w[static_cast<size_t>(ch * K + j)] * xbc_in[static_cast<size_t>(src)][static_cast<size_t>(ch)];
        }
        xbc[static_cast<size_t>(ch)] = ref_silu(acc);
      }
      std::vector<double> ys(static_cast<size_t>(I));
      for (int64_t hd = 0; hd < H; ++hd) {
        const int64_t g = hd / (H / G);
        double dt = ref_softplus(proj[static_cast<size_t>(I + CD + hd)] + w.dt_bias[static_cast<size_t>(hd)]);
        dt = std::clamp(dt, static_cast<double>(c.time_step_limit_min), static_cast<double>(c.time_step_limit_max));
        const double a = std::exp(dt * -std::exp(w.A_log[static_cast<size_t>(hd)]));
        for (int64_t p = 0; p < P; ++p) {
          const double xp = xbc[static_cast<size_t>(hd * P + p)];
          double acc = w.D[static_cast<size_t>(hd)] * xp;
          for (int64_t n = 0; n < N; ++n) {
            double& s = h[static_cast<size_t>((hd * P + p) * N + n)];
            s = a * s + dt * xp * xbc[static_cast<size_t>(I + g * N + n)];
            acc += xbc[static_cast<size_t>(I + G * N + g * N + n)] * s;
          }
          ys[static_cast<size_t>(hd * P + p)] = acc;
        }
      }
      const int64_t gs = I / G;
      for (int64_t i = 0; i < I; ++i) ys[static_cast<size_t>(i)] *= ref_silu(proj[static_cast<size_t>(i)]);
      for (int64_t g0 = 0; g0 < I; g0 += gs) {
        double ss = 0;
        for (int64_t i = g0; i < g0 + gs; ++i) ss += ys[static_cast<size_t>(i)] * ys[static_cast<size_t>(i)];
        const double inv = 1 / std::sqrt(ss / static_cast<double>(gs) + c.layer_norm_epsilon);
        for (int64_t i = g0; i < g0 + gs; ++i) ys[static_cast<size_t>(i)] *= inv * w.norm_w[static_cast<size_t>(i)];
      }
      const auto out = ref_linear(w.out_w, w.out_b, ys.data(), D, I);
      std::copy(out.begin(), out.end(), y.begin() + (b * T + t) * D);
    }
  }
  return y;
}

}  // namespace subq::test
