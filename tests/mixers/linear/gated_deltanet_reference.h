// Float64 naive Qwen3-Next Gated DeltaNet layer, token by token, following HF
// Qwen3NextGatedDeltaNet: grouped in_proj_qkvz / in_proj_ba, causal conv + SiLU over
// [q k v], beta = sigmoid(b), g = -exp(A_log) softplus(a + dt_bias), l2-normalised q/k,
// q / sqrt(dk), the gated delta rule (torch_recurrent_gated_delta_rule), then
// rms_norm(o) * weight * silu(z) per value head and out_proj.
#pragma once

#include <cmath>
#include <vector>

#include "src/mixers/gated_deltanet_mixer.h"
#include "tests/mixers/linear/mamba2_reference.h"

namespace subq::test {

inline std::vector<double> gated_deltanet_reference(const mixers::GatedDeltaNetConfig& c,
                                                    const mixers::GatedDeltaNetWeights& weights,
                                                    const std::vector<double>& x, int64_t B, int64_t T) {
  const auto qkvz_w = to_double(weights.in_proj_qkvz), ba_w = to_double(weights.in_proj_ba);
  const auto conv_w = to_double(weights.conv1d_weight), dt_bias = to_double(weights.dt_bias);
  const auto A_log = to_double(weights.A_log), norm_w = to_double(weights.norm_weight);
  const auto out_w = to_double(weights.out_proj);
  const int64_t D = c.hidden_size, Hk = c.num_key_heads, Hv = c.num_value_heads, r = Hv / Hk, dk = c.head_k_dim,
                dv = c.head_v_dim, K = c.conv_kernel, KD = c.key_dim(), VD = c.value_dim(), CD = c.conv_dim();
  const int64_t per_head = 2 * dk + 2 * r * dv;
  const auto at = [](std::vector<double>& v, int64_t i) -> double& { return v[static_cast<size_t>(i)]; };
  std::vector<double> y(static_cast<size_t>(B * T * D));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<std::vector<double>> conv_in;
    std::vector<double> S(static_cast<size_t>(Hv * dk * dv), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const double* xt = &x[static_cast<size_t>((b * T + t) * D)];
      auto qkvz = ref_linear(qkvz_w, {}, xt, 2 * KD + 2 * VD, D);
      auto ba = ref_linear(ba_w, {}, xt, 2 * Hv, D);
      std::vector<double> mixed(static_cast<size_t>(CD)), z(static_cast<size_t>(VD)), beta(static_cast<size_t>(Hv)),
          g(static_cast<size_t>(Hv));
      for (int64_t kh = 0; kh < Hk; ++kh) {
        const int64_t base = kh * per_head;
        for (int64_t i = 0; i < dk; ++i) {
          at(mixed, kh * dk + i) = at(qkvz, base + i);
          at(mixed, KD + kh * dk + i) = at(qkvz, base + dk + i);
        }
        for (int64_t i = 0; i < r * dv; ++i) {
          at(mixed, 2 * KD + kh * r * dv + i) = at(qkvz, base + 2 * dk + i);
          at(z, kh * r * dv + i) = at(qkvz, base + 2 * dk + r * dv + i);
        }
        for (int64_t j = 0; j < r; ++j) {
          const int64_t h = kh * r + j;
          at(beta, h) = 1 / (1 + std::exp(-at(ba, kh * 2 * r + j)));
          at(g, h) = -std::exp(A_log[static_cast<size_t>(h)]) * ref_softplus(at(ba, kh * 2 * r + r + j) + dt_bias[static_cast<size_t>(h)]);
        }
      }
      conv_in.push_back(mixed);
      std::vector<double> conv(static_cast<size_t>(CD));
      for (int64_t ch = 0; ch < CD; ++ch) {
        double acc = 0;
        for (int64_t j = 0; j < K; ++j) {
          const int64_t src = t - (K - 1) + j;
          if (src >= 0) acc += conv_w[static_cast<size_t>(ch * K + j)] * conv_in[static_cast<size_t>(src)][static_cast<size_t>(ch)];
        }
        at(conv, ch) = ref_silu(acc);
      }
      std::vector<double> o(static_cast<size_t>(VD));
      for (int64_t h = 0; h < Hv; ++h) {
        const int64_t kh = h / r;
        std::vector<double> q(&conv[static_cast<size_t>(kh * dk)], &conv[static_cast<size_t>(kh * dk)] + dk);
        std::vector<double> k(&conv[static_cast<size_t>(KD + kh * dk)], &conv[static_cast<size_t>(KD + kh * dk)] + dk);
        const double* v = &conv[static_cast<size_t>(2 * KD + h * dv)];
        double qq = 0, kk = 0;
        for (int64_t i = 0; i < dk; ++i) {
          qq += at(q, i) * at(q, i);
          kk += at(k, i) * at(k, i);
        }
        for (int64_t i = 0; i < dk; ++i) {
          at(q, i) /= std::sqrt(qq + 1e-6) * std::sqrt(static_cast<double>(dk));
          at(k, i) /= std::sqrt(kk + 1e-6);
        }
        double* Sh = &S[static_cast<size_t>(h * dk * dv)];
        const double a = std::exp(at(g, h));
        for (int64_t i = 0; i < dk * dv; ++i) Sh[i] *= a;
        for (int64_t j = 0; j < dv; ++j) {
          double mem = 0;
          for (int64_t i = 0; i < dk; ++i) mem += Sh[i * dv + j] * at(k, i);
          const double delta = (v[j] - mem) * at(beta, h);
          for (int64_t i = 0; i < dk; ++i) Sh[i * dv + j] += at(k, i) * delta;
        }
        double ss = 0;
        for (int64_t j = 0; j < dv; ++j) {
          double acc = 0;
          for (int64_t i = 0; i < dk; ++i) acc += Sh[i * dv + j] * at(q, i);
          at(o, h * dv + j) = acc;
          ss += acc * acc;
        }
        const double inv = 1 / std::sqrt(ss / static_cast<double>(dv) + c.rms_norm_eps);
        for (int64_t j = 0; j < dv; ++j)
          at(o, h * dv + j) *= inv * norm_w[static_cast<size_t>(j)] * ref_silu(at(z, h * dv + j));
      }
      const auto out = ref_linear(out_w, {}, o.data(), D, VD);
      std::copy(out.begin(), out.end(), y.begin() + (b * T + t) * D);
    }
  }
  return y;
}

}  // namespace subq::test
