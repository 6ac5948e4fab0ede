// Float64 naive GLA layer (gla_mixer.h), token by token: projections, the low-rank
// logsigmoid gate, S = diag(a) S + k v^T, o = S^T q / sqrt(dk), then
// rms_norm(o) * weight * silu(g) per head and o_proj.
#pragma once

#include <cmath>
#include <vector>

#include "src/mixers/gla_mixer.h"
#include "tests/mixers/linear/mamba2_reference.h"

namespace subq::test {

inline std::vector<double> gla_reference(const mixers::GlaConfig& c, const mixers::GlaWeights& w,
                                         const std::vector<double>& x, int64_t B, int64_t T) {
  const auto qw = to_double(w.q_proj), kw = to_double(w.k_proj), vw = to_double(w.v_proj);
  const auto g0 = to_double(w.gk_proj_0), g1 = to_double(w.gk_proj_1), gb = to_double(w.gk_bias);
  const auto gw = to_double(w.g_proj), nw = to_double(w.g_norm), ow = to_double(w.o_proj);
  const int64_t D = c.hidden_size, H = c.num_heads, KD = c.key_dim, VD = c.value_dim, dk = KD / H, dv = VD / H;
  std::vector<double> y(static_cast<size_t>(B * T * D));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> S(static_cast<size_t>(H * dk * dv), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const double* xt = &x[static_cast<size_t>((b * T + t) * D)];
      const auto q = ref_linear(qw, {}, xt, KD, D), k = ref_linear(kw, {}, xt, KD, D), v = ref_linear(vw, {}, xt, VD, D);
      const auto g = ref_linear(gw, {}, xt, VD, D);
      const auto low = ref_linear(g0, {}, xt, c.gate_low_rank_dim, D);
      const auto gk = ref_linear(g1, gb, low.data(), KD, c.gate_low_rank_dim);
      std::vector<double> o(static_cast<size_t>(VD));
      for (int64_t h = 0; h < H; ++h) {
        double* Sh = &S[static_cast<size_t>(h * dk * dv)];
        for (int64_t i = 0; i < dk; ++i) {
          const double u = gk[static_cast<size_t>(h * dk + i)];
          const double log_a = -std::log1p(std::exp(-u)) / c.gate_logit_normalizer;  // logsigmoid(u) / normaliser
          for (int64_t j = 0; j < dv; ++j)
            Sh[i * dv + j] = std::exp(log_a) * Sh[i * dv + j] + k[static_cast<size_t>(h * dk + i)] * v[static_cast<size_t>(h * dv + j)];
        }
        double ss = 0;
        for (int64_t j = 0; j < dv; ++j) {
          double acc = 0;
          for (int64_t i = 0; i < dk; ++i) acc += Sh[i * dv + j] * q[static_cast<size_t>(h * dk + i)] / std::sqrt(static_cast<double>(dk));
          o[static_cast<size_t>(h * dv + j)] = acc;
          ss += acc * acc;
        }
        const double inv = 1 / std::sqrt(ss / static_cast<double>(dv) + c.norm_eps);
        for (int64_t j = 0; j < dv; ++j)
          o[static_cast<size_t>(h * dv + j)] *= inv * nw[static_cast<size_t>(j)] * ref_silu(g[static_cast<size_t>(h * dv + j)]);
      }
      const auto out = ref_linear(ow, {}, o.data(), D, VD);
      std::copy(out.begin(), out.end(), y.begin() + (b * T + t) * D);
    }
  }
  return y;
}

}  // namespace subq::test
