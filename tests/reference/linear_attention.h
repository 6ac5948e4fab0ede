// Float64 reference for family L (gated linear attention), written for reading:
// the recurrence exactly as defined, one token at a time,
//   S_t = diag(a_t) S_{t-1} + phi(k_t) v_t^T,   o_t = S_t^T (scale * phi(q_t)),
// optionally divided by (scale * phi(q_t)) . z_t + eps with z_t = diag(a_t) z_{t-1} + phi(k_t).
// Layouts: q [B, T, Hq, dk], k [B, T, Hk, dk], v [B, T, Hv, dv], row-major; output head h
// reads q head h / (H / Hq) (likewise k, v). Gates are given as log a.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "src/ops/linear/gated_linear_attention.h"

namespace subq::reference {

struct LinearAttentionShape {
  int64_t B = 1, T = 1, Hq = 1, Hk = 1, Hv = 1, dk = 1, dv = 1;
  int64_t H() const { return std::max({Hq, Hk, Hv}); }
};

inline double feature_map(ops::FeatureMap f, double x) {
  switch (f) {
    case ops::FeatureMap::elu_plus_one: return x > 0 ? x + 1 : std::exp(x);
    case ops::FeatureMap::relu: return std::max(x, 0.0);
    default: return x;
  }
}

// Returns o [B, T, H, dv]. state: [B, H, dk, dv + normalize], the initial state on
// entry (empty = zeros) and the final state on return.
inline std::vector<double> linear_attention(const LinearAttentionShape& s, const std::vector<double>& q,
                                            const std::vector<double>& k, const std::vector<double>& v,
                                            const std::vector<double>& log_gate,
                                            const ops::LinearAttentionOptions& opt, std::vector<double>& state) {
  const int64_t H = s.H(), dvs = s.dv + (opt.normalize ? 1 : 0);
  if (state.empty()) state.assign(static_cast<size_t>(s.B * H * s.dk * dvs), 0.0);
  std::vector<double> o(static_cast<size_t>(s.B * s.T * H * s.dv));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      double* S = &state[static_cast<size_t>((b * H + h) * s.dk * dvs)];
      for (int64_t t = 0; t < s.T; ++t) {
        const double* qt = &q[static_cast<size_t>(((b * s.T + t) * s.Hq + h / (H / s.Hq)) * s.dk)];
        const double* kt = &k[static_cast<size_t>(((b * s.T + t) * s.Hk + h / (H / s.Hk)) * s.dk)];
        const double* vt = &v[static_cast<size_t>(((b * s.T + t) * s.Hv + h / (H / s.Hv)) * s.dv)];
        for (int64_t i = 0; i < s.dk; ++i) {
          double log_a = 0;
          switch (opt.gate) {
            case ops::LinearGate::none: break;
            case ops::LinearGate::per_head: log_a = log_gate[static_cast<size_t>(h)]; break;
            case ops::LinearGate::per_token: log_a = log_gate[static_cast<size_t>((b * s.T + t) * H + h)]; break;
            case ops::LinearGate::per_token_vector:
              log_a = log_gate[static_cast<size_t>(((b * s.T + t) * H + h) * s.dk + i)];
              break;
          }
          const double a = std::exp(log_a), ki = feature_map(opt.feature_map, kt[i]);
          for (int64_t j = 0; j < dvs; ++j) {
            const double vj = j < s.dv ? vt[j] : 1.0;  // column dv carries z
            S[i * dvs + j] = a * S[i * dvs + j] + ki * vj;
          }
        }
        std::vector<double> out(static_cast<size_t>(dvs), 0.0);
        for (int64_t i = 0; i < s.dk; ++i) {
          const double qi = opt.scale * feature_map(opt.feature_map, qt[i]);
          for (int64_t j = 0; j < dvs; ++j) out[static_cast<size_t>(j)] += qi * S[i * dvs + j];
        }
        double* ot = &o[static_cast<size_t>(((b * s.T + t) * H + h) * s.dv)];
        for (int64_t j = 0; j < s.dv; ++j)
          ot[j] = opt.normalize ? out[static_cast<size_t>(j)] / (out[static_cast<size_t>(s.dv)] + opt.normalizer_eps)
                                : out[static_cast<size_t>(j)];
      }
    }
  return o;
}

}  // namespace subq::reference

namespace subq::reference {

// Mamba-2 SSD in its own (state-space) form, per head h with group g = h / (H / G):
//   h_t[p, n] = exp(dt_t A_h) h_{t-1}[p, n] + dt_t x_t[p] B_t[n]
//   y_t[p]    = sum_n C_t[n] h_t[p, n] + D_h x_t[p]
// x [B, T, H, P], dt [B, T, H], Bm/Cm [B, T, G, N]; state [B, H, N, P] in/out (the
// kernel's layout), empty = zeros.
inline std::vector<double> ssd(int64_t B, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N,
                               const std::vector<double>& x, const std::vector<double>& dt,
                               const std::vector<double>& A, const std::vector<double>& Bm,
                               const std::vector<double>& Cm, const std::vector<double>& D,
                               std::vector<double>& state) {
  if (state.empty()) state.assign(static_cast<size_t>(B * H * N * P), 0.0);
  std::vector<double> y(static_cast<size_t>(B * T * H * P));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G);
      auto hs = [&](int64_t p, int64_t n) -> double& { return state[static_cast<size_t>(((b * H + h) * N + n) * P + p)]; };
      for (int64_t t = 0; t < T; ++t) {
        const double d = dt[static_cast<size_t>((b * T + t) * H + h)];
        const double a = std::exp(d * A[static_cast<size_t>(h)]);
        const double* xt = &x[static_cast<size_t>(((b * T + t) * H + h) * P)];
        const double* bt = &Bm[static_cast<size_t>(((b * T + t) * G + g) * N)];
        const double* ct = &Cm[static_cast<size_t>(((b * T + t) * G + g) * N)];
        for (int64_t p = 0; p < P; ++p) {
          double acc = D.empty() ? 0.0 : D[static_cast<size_t>(h)] * xt[p];
          for (int64_t n = 0; n < N; ++n) {
            hs(p, n) = a * hs(p, n) + d * xt[p] * bt[n];
            acc += ct[n] * hs(p, n);
          }
          y[static_cast<size_t>(((b * T + t) * H + h) * P + p)] = acc;
        }
      }
    }
  return y;
}

}  // namespace subq::reference
