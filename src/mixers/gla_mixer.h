// Gated linear attention mixer in the style of GLA (Yang et al. 2024; fla's
// GatedLinearAttention layer with its defaults: no short conv, identity feature map):
//   q, k, v = q_proj(x), k_proj(x), v_proj(x)                  (H heads of dk, dv)
//   log a   = logsigmoid(gk_proj_1(gk_proj_0(x)) + bias) / gate_logit_normalizer   (per dk)
//   o       = GLA(q / sqrt(dk), k, v, log a)      (vector gate per token, chunked kernel)
//   out     = o_proj(rms_norm(o) * g_norm_weight * silu(g_proj(x)))   per head
// State per sequence: the matrix state [H, dk, dv].
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "subq/mixer.h"

namespace subq::mixers {

struct GlaConfig {
  int64_t hidden_size = 0;          // D
  int64_t num_heads = 1;            // H
  int64_t key_dim = 0;              // H * dk
  int64_t value_dim = 0;            // H * dv
  int64_t gate_low_rank_dim = 16;
  float gate_logit_normalizer = 16.f;
  float norm_eps = 1e-5f;
  int64_t chunk_size = 64;
};

struct GlaWeights {
  Tensor q_proj;       // [key_dim, D]
  Tensor k_proj;       // [key_dim, D]
  Tensor v_proj;       // [value_dim, D]
  Tensor gk_proj_0;    // gk_proj.0.weight [gate_low_rank_dim, D]
  Tensor gk_proj_1;    // gk_proj.1.weight [key_dim, gate_low_rank_dim]
  Tensor gk_bias;      // gk_proj.1.bias [key_dim]
  Tensor g_proj;       // [value_dim, D]
  Tensor g_norm;       // g_norm_swish_gate.weight [value_dim / H]
  Tensor o_proj;       // [D, value_dim]
};

class GlaMixer final : public Mixer {
 public:
  GlaMixer(const GlaConfig& config, const GlaWeights& weights);
  std::string kind() const override { return "gla"; }
  int64_t d_model() const override { return cfg_.hidden_size; }
  std::unique_ptr<MixerState> new_state(int64_t batch) const override;
  void forward(const Tensor& x, MixerState& state, const Tensor& y) const override;

 private:
  GlaConfig cfg_;
  GlaWeights w_;  // projections as given; gk_bias and g_norm as f32 copies
};

}  // namespace subq::mixers
