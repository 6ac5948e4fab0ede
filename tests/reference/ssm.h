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

namespace subq::ref {

// y[M, N] = x[M, K] W[N, K]^T + bias[N] (bias may be empty).
inline Vec linear(const Vec& x, int64_t M, int64_t K, const Vec& W, int64_t N, const Vec& bias) {
  Vec y(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = bias.empty() ? 0.0 : bias[n];
      for (int64_t k = 0; k < K; ++k) acc += x[m * K + k] * W[n * K + k];
      y[m * N + n] = acc;
    }
  return y;
}

struct MambaRef {
  int64_t d_model, d_inner, d_state, d_conv, dt_rank;
  Vec in_proj, in_proj_bias, conv_weight, conv_bias, x_proj, dt_proj, dt_proj_bias, A_log, D, out_proj, out_proj_bias;
};

// Hugging Face MambaMixer.slow_forward over u[B, T, d_model] from a zero state.
inline Vec mamba_mixer(const MambaRef& m, const Vec& u, int64_t B, int64_t T) {
  const int64_t I = m.d_inner, N = m.d_state, R = m.dt_rank, M = B * T;
  const Vec proj = linear(u, M, m.d_model, m.in_proj, 2 * I, m.in_proj_bias);
  Vec x(static_cast<size_t>(M * I)), z(static_cast<size_t>(M * I));
  for (int64_t r = 0; r < M; ++r)
    for (int64_t i = 0; i < I; ++i) {
      x[r * I + i] = proj[r * 2 * I + i];
      z[r * I + i] = proj[r * 2 * I + I + i];
    }
  const Vec xc = causal_conv1d(x, B, T, I, m.conv_weight, m.d_conv, m.conv_bias, {}, true);
  const Vec dbl = linear(xc, M, I, m.x_proj, R + 2 * N, {});
  Vec dt_in(static_cast<size_t>(M * R)), Bm(static_cast<size_t>(M * N)), Cm(static_cast<size_t>(M * N));
  for (int64_t r = 0; r < M; ++r) {
    for (int64_t k = 0; k < R; ++k) dt_in[r * R + k] = dbl[r * (R + 2 * N) + k];
    for (int64_t n = 0; n < N; ++n) {
      Bm[r * N + n] = dbl[r * (R + 2 * N) + R + n];
      Cm[r * N + n] = dbl[r * (R + 2 * N) + R + N + n];
    }
  }
  const Vec dt = linear(dt_in, M, R, m.dt_proj, I, m.dt_proj_bias);
  Vec A(m.A_log.size());
  for (size_t i = 0; i < A.size(); ++i) A[i] = -std::exp(m.A_log[i]);
  Vec h(static_cast<size_t>(B * I * N), 0.0);
  const Vec y = selective_scan(xc, dt, {}, true, A, Bm, Cm, m.D, z, h, B, T, I, N, 1);
  return linear(y, M, I, m.out_proj, m.d_model, m.out_proj_bias);
}

}  // namespace subq::ref

#include <complex>

namespace subq::ref {

using Cplx = std::complex<double>;

// S4D with ZOH from continuous A, B, C [H, M] and dt [H]: the recurrence over u [B, T, H]
// from a zero state, y = 2 Re(C s) + D u (D may be empty).
inline Vec s4d(const std::vector<Cplx>& A, const std::vector<Cplx>& Bc, const std::vector<Cplx>& C, const Vec& dt,
               const Vec& D, const Vec& u, int64_t B, int64_t T, int64_t H, int64_t M) {
  Vec y(static_cast<size_t>(B * T * H));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<Cplx> s(static_cast<size_t>(M), 0.0);
      for (int64_t t = 0; t < T; ++t) {
        const double ut = u[(b * T + t) * H + h];
        Cplx out = 0;
        for (int64_t m = 0; m < M; ++m) {
          const size_t i = static_cast<size_t>(h * M + m);
          const Cplx dA = std::exp(dt[h] * A[i]);
          const Cplx dB = (dA - 1.0) / A[i] * Bc[i];
          s[m] = dA * s[m] + dB * ut;
          out += C[i] * s[m];
        }
        y[(b * T + t) * H + h] = 2 * out.real() + (D.empty() ? 0.0 : D[h] * ut);
      }
    }
  return y;
}

// The S4D convolution kernel K[h, l] = 2 Re(sum_m C dB dA^l), l < L.
inline Vec s4d_kernel(const std::vector<Cplx>& A, const std::vector<Cplx>& Bc, const std::vector<Cplx>& C,
                      const Vec& dt, int64_t H, int64_t M, int64_t L) {
  Vec K(static_cast<size_t>(H * L), 0.0);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t m = 0; m < M; ++m) {
      const size_t i = static_cast<size_t>(h * M + m);
      const Cplx dA = std::exp(dt[h] * A[i]);
      const Cplx dB = (dA - 1.0) / A[i] * Bc[i];
      for (int64_t l = 0; l < L; ++l) K[h * L + l] += 2 * (C[i] * dB * std::pow(dA, static_cast<double>(l))).real();
    }
  return K;
}

}  // namespace subq::ref
