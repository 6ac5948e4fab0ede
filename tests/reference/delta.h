// Float64 reference for family D (delta rule), written for reading: one token at a time,
//   q, k <- q / |q|, k / |k|   (when l2 normalisation is on; |x| = sqrt(sum x^2 + eps))
//   S <- a S;   S <- S + beta k (v - S^T k)^T;   o = S^T (scale q)
// which is S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T.
// q [B, T, Hq, dk], k [B, T, Hk, dk], v [B, T, Hv, dv]; beta, log_gate [B, T, H]
// (log_gate empty: a = 1). state [B, H, dk, dv] in/out (empty = zeros). Returns o.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace subq::reference {

struct DeltaShape {
  int64_t B = 1, T = 1, Hq = 1, Hk = 1, Hv = 1, dk = 1, dv = 1;
  int64_t H() const { return std::max({Hq, Hk, Hv}); }
};

inline std::vector<double> delta_rule(const DeltaShape& s, std::vector<double> q, std::vector<double> k,
                                      const std::vector<double>& v, const std::vector<double>& beta,
                                      const std::vector<double>& log_gate, bool l2_normalize, double l2_eps,
                                      double scale, std::vector<double>& state) {
  const int64_t H = s.H();
  auto normalise_rows = [&](std::vector<double>& x) {
    for (size_t r = 0; r < x.size() / static_cast<size_t>(s.dk); ++r) {
      double ss = 0;
      for (int64_t d = 0; d < s.dk; ++d) ss += x[r * static_cast<size_t>(s.dk) + static_cast<size_t>(d)] * x[r * static_cast<size_t>(s.dk) + static_cast<size_t>(d)];
      for (int64_t d = 0; d < s.dk; ++d) x[r * static_cast<size_t>(s.dk) + static_cast<size_t>(d)] /= std::sqrt(ss + l2_eps);
    }
  };
  if (l2_normalize) {
    normalise_rows(q);
    normalise_rows(k);
  }
  if (state.empty()) state.assign(static_cast<size_t>(s.B * H * s.dk * s.dv), 0.0);
  std::vector<double> o(static_cast<size_t>(s.B * s.T * H * s.dv));
  std::vector<double> u(static_cast<size_t>(s.dv));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      double* S = &state[static_cast<size_t>((b * H + h) * s.dk * s.dv)];
      for (int64_t t = 0; t < s.T; ++t) {
        const double* qt = &q[static_cast<size_t>(((b * s.T + t) * s.Hq + h / (H / s.Hq)) * s.dk)];
        const double* kt = &k[static_cast<size_t>(((b * s.T + t) * s.Hk + h / (H / s.Hk)) * s.dk)];
        const double* vt = &v[static_cast<size_t>(((b * s.T + t) * s.Hv + h / (H / s.Hv)) * s.dv)];
        const size_t bth = static_cast<size_t>((b * s.T + t) * H + h);
        const double a = log_gate.empty() ? 1.0 : std::exp(log_gate[bth]);
        for (int64_t i = 0; i < s.dk * s.dv; ++i) S[i] *= a;
        for (int64_t j = 0; j < s.dv; ++j) {
          u[static_cast<size_t>(j)] = 0;
          for (int64_t i = 0; i < s.dk; ++i) u[static_cast<size_t>(j)] += S[i * s.dv + j] * kt[i];
        }
        for (int64_t i = 0; i < s.dk; ++i)
          for (int64_t j = 0; j < s.dv; ++j) S[i * s.dv + j] += beta[bth] * kt[i] * (vt[j] - u[static_cast<size_t>(j)]);
        for (int64_t j = 0; j < s.dv; ++j) {
          double acc = 0;
          for (int64_t i = 0; i < s.dk; ++i) acc += S[i * s.dv + j] * scale * qt[i];
          o[bth * static_cast<size_t>(s.dv) + static_cast<size_t>(j)] = acc;
        }
      }
    }
  return o;
}

}  // namespace subq::reference

namespace subq::reference {

// Generalized (diagonal-plus-low-rank) delta rule, RWKV-7's WKV-7, one token at a time:
//   u = S^T a;   S <- diag(exp(log_w)) S + b u^T + k v^T;   o = S^T (scale q)
// which is S_t = (diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T. Every input has H heads:
// q, k, a, b, log_w [B, T, H, dk], v [B, T, H, dv]; state [B, H, dk, dv] in/out
// (empty = zeros). Returns o [B, T, H, dv].
inline std::vector<double> generalized_delta_rule(const DeltaShape& s, const std::vector<double>& q,
                                                  const std::vector<double>& k, const std::vector<double>& v,
                                                  const std::vector<double>& a, const std::vector<double>& b,
                                                  const std::vector<double>& log_w, double scale,
                                                  std::vector<double>& state) {
  const auto z = [](int64_t i) { return static_cast<size_t>(i); };
  const int64_t H = s.H(), dk = s.dk, dv = s.dv;
  if (state.empty()) state.assign(z(s.B * H * dk * dv), 0.0);
  std::vector<double> o(z(s.B * s.T * H * dv)), u(z(dv));
  for (int64_t bi = 0; bi < s.B; ++bi)
    for (int64_t h = 0; h < H; ++h) {
      double* S = &state[z((bi * H + h) * dk * dv)];
      for (int64_t t = 0; t < s.T; ++t) {
        const size_t row = z((bi * s.T + t) * H + h);
        const size_t kr = row * z(dk), vr = row * z(dv);
        for (int64_t j = 0; j < dv; ++j) {
          u[z(j)] = 0;
          for (int64_t i = 0; i < dk; ++i) u[z(j)] += S[i * dv + j] * a[kr + z(i)];
        }
        for (int64_t i = 0; i < dk; ++i)
          for (int64_t j = 0; j < dv; ++j)
            S[i * dv + j] = std::exp(log_w[kr + z(i)]) * S[i * dv + j] + b[kr + z(i)] * u[z(j)] +
                            k[kr + z(i)] * v[vr + z(j)];
        for (int64_t j = 0; j < dv; ++j) {
          double acc = 0;
          for (int64_t i = 0; i < dk; ++i) acc += S[i * dv + j] * scale * q[kr + z(i)];
          o[vr + z(j)] = acc;
        }
      }
    }
  return o;
}

}  // namespace subq::reference
