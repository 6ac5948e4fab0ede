// Float64 references for Mamba-1's selective scan and the causal depthwise conv1d,
// written for reading (the definitions of src/ops/ssm and src/ops/conv).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace subq::ref {

using Vec = std::vector<double>;

struct ScanInputs {
  Vec x, dt, A, B, C, D, z, dt_bias;  // D, z, dt_bias may be empty (absent)
  int64_t batch, T, channels, N, groups;
  bool dt_softplus;
};

// Returns y[B, T, D]; `state` [B, D, N] is the initial state and becomes the final one.
//   dt' = softplus(dt + bias); h = exp(dt' A) h + dt' B x; y = (C.h + D x) * silu(z).
inline Vec selective_scan(const ScanInputs& in, Vec& state) {
  const int64_t Dc = in.channels, N = in.N, G = in.groups;
  Vec y(static_cast<size_t>(in.batch * in.T * Dc));
  for (int64_t b = 0; b < in.batch; ++b)
    for (int64_t d = 0; d < Dc; ++d) {
      const int64_t g = d / (Dc / G);
      double* h = &state[static_cast<size_t>((b * Dc + d) * N)];
      for (int64_t t = 0; t < in.T; ++t) {
        const size_t i = static_cast<size_t>((b * in.T + t) * Dc + d);
        double dt = in.dt[i] + (in.dt_bias.empty() ? 0.0 : in.dt_bias[static_cast<size_t>(d)]);
        if (in.dt_softplus) dt = std::log1p(std::exp(dt));
        const size_t bc = static_cast<size_t>(((b * in.T + t) * G + g) * N);
        double out = 0;
        for (int64_t n = 0; n < N; ++n) {
          h[n] = std::exp(dt * in.A[static_cast<size_t>(d * N + n)]) * h[n] + dt * in.B[bc + n] * in.x[i];
          out += in.C[bc + n] * h[n];
        }
        if (!in.D.empty()) out += in.D[static_cast<size_t>(d)] * in.x[i];
        if (!in.z.empty()) out *= in.z[i] / (1.0 + std::exp(-in.z[i]));
        y[i] = out;
      }
    }
  return y;
}

// y[b,t,d] = act(bias[d] + sum_k w[d,k] u[t+k]) with u = [state (W-1 rows); x]; state
// [B, W-1, D] becomes the last W-1 rows of u.
inline Vec causal_conv1d(const Vec& x, const Vec& w, const Vec& bias, bool silu, Vec& state, int64_t batch,
                         int64_t T, int64_t Dc, int64_t W) {
  Vec y(x.size());
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t d = 0; d < Dc; ++d) {
      Vec u;
      for (int64_t j = 0; j < W - 1; ++j) u.push_back(state[static_cast<size_t>((b * (W - 1) + j) * Dc + d)]);
      for (int64_t t = 0; t < T; ++t) u.push_back(x[static_cast<size_t>((b * T + t) * Dc + d)]);
      for (int64_t t = 0; t < T; ++t) {
        double acc = bias.empty() ? 0.0 : bias[static_cast<size_t>(d)];
        for (int64_t k = 0; k < W; ++k) acc += w[static_cast<size_t>(d * W + k)] * u[static_cast<size_t>(t + k)];
        if (silu) acc = acc / (1.0 + std::exp(-acc));
        y[static_cast<size_t>((b * T + t) * Dc + d)] = acc;
      }
      for (int64_t j = 0; j < W - 1; ++j)
        state[static_cast<size_t>((b * (W - 1) + j) * Dc + d)] = u[static_cast<size_t>(T + j)];
    }
  return y;
}

}  // namespace subq::ref
