// Gated DeltaNet mixer with the structure of Hugging Face Qwen3-Next's linear attention
// layer (Qwen3NextGatedDeltaNet):
//   [q k v z] = in_proj_qkvz(x), [b a] = in_proj_ba(x), both grouped per key head
//     (per key head: q dk | k dk | v r*dv | z r*dv and b r | a r, r = Hv / Hk)
//   [q k v] = silu(causal_conv1d([q k v]))        (no conv bias)
//   beta = sigmoid(b);  log a = -exp(A_log) * softplus(a + dt_bias)
//   o = gated_delta_rule(l2norm(q) / sqrt(dk), l2norm(k), v, beta, log a)  (q, k shared by r heads)
//   out = out_proj(rms_norm(o) * norm_weight * silu(z))   per value head
// State per sequence: the conv window and the delta-rule state [Hv, dk, dv].
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "subq/mixer.h"

namespace subq::mixers {

struct GatedDeltaNetConfig {
  int64_t hidden_size = 0;     // D
  int64_t num_key_heads = 0;   // linear_num_key_heads, Hk
  int64_t num_value_heads = 0; // linear_num_value_heads, Hv (a multiple of Hk)
  int64_t head_k_dim = 128;    // linear_key_head_dim
  int64_t head_v_dim = 128;    // linear_value_head_dim
  int64_t conv_kernel = 4;     // linear_conv_kernel_dim
  float rms_norm_eps = 1e-6f;
  int64_t chunk_size = 64;     // delta-rule chunk (speed knob)
  int64_t key_dim() const { return num_key_heads * head_k_dim; }
  int64_t value_dim() const { return num_value_heads * head_v_dim; }
  int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }
};

// Hugging Face tensor names (under linear_attn.) in comments.
struct GatedDeltaNetWeights {
  Tensor in_proj_qkvz;   // in_proj_qkvz.weight [2 key_dim + 2 value_dim, D]
  Tensor in_proj_ba;     // in_proj_ba.weight [2 Hv, D]
  Tensor conv1d_weight;  // conv1d.weight [conv_dim, 1, K]
  Tensor dt_bias;        // dt_bias [Hv]
  Tensor A_log;          // A_log [Hv]
  Tensor norm_weight;    // norm.weight [head_v_dim]
  Tensor out_proj;       // out_proj.weight [D, value_dim]
};

class GatedDeltaNetMixer final : public Mixer {
 public:
  GatedDeltaNetMixer(const GatedDeltaNetConfig& config, const GatedDeltaNetWeights& weights);
  std::string kind() const override { return "gated_deltanet"; }
  int64_t d_model() const override { return cfg_.hidden_size; }
  std::unique_ptr<MixerState> new_state(int64_t batch) const override;
  void forward(const Tensor& x, MixerState& state, const Tensor& y) const override;

 private:
  GatedDeltaNetConfig cfg_;
  Tensor qkvz_w_, ba_w_, conv_w_, dt_bias_, A_, norm_w_, out_w_;
};

}  // namespace subq::mixers
