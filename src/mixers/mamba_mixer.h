// Mamba-1 token mixer with the structure of Hugging Face's MambaMixer
// (transformers/models/mamba/modeling_mamba.py):
//   [x, z] = in_proj(u)                       x, z: [B, T, d_inner]
//   x      = silu(conv1d(x))                  causal depthwise, width d_conv
//   [dt, B, C] = x_proj(x)                    dt_rank, d_state, d_state
//   dt     = dt_proj(dt)                      its bias is applied inside the scan
//   y      = selective_scan(x, dt, A = -exp(A_log), B, C, D, gate z)
//   out    = out_proj(y)
// The state of a sequence is the conv window (last d_conv - 1 conv inputs) and the SSM
// state h[d_inner, d_state], both f32; its size does not depend on tokens seen.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "subq/mixer.h"
#include "subq/tensor.h"

namespace subq {

// Hugging Face MambaConfig fields: hidden_size, intermediate_size, state_size,
// conv_kernel, time_step_rank, use_conv_bias, use_bias.
struct MambaConfig {
  int64_t d_model = 0;
  int64_t d_inner = 0;
  int64_t d_state = 16;
  int64_t d_conv = 4;
  int64_t dt_rank = 0;
  bool conv_bias = true;
  bool proj_bias = false;  // in_proj and out_proj biases
  // Jamba's variant: RMSNorms (weights in MambaWeights, this epsilon) on dt, B and C
  // right after x_proj. Off for Mamba.
  bool inner_norms = false;
  float inner_norm_eps = 1e-6f;
};

// The mixer's tensors, named after the checkpoint's `mixer.*` entries. Projection weights
// may be f32, bf16 or f16 and are used in place (a mapped checkpoint is not copied); the
// small per-channel tensors (conv, dt bias, A_log, D, biases) are widened to f32 once.
struct MambaWeights {
  Tensor in_proj;        // [2 * d_inner, d_model]
  Tensor in_proj_bias;   // [2 * d_inner], present iff proj_bias
  Tensor conv_weight;    // [d_inner, 1, d_conv] (or [d_inner, d_conv])
  Tensor conv_bias;      // [d_inner], present iff conv_bias
  Tensor x_proj;         // [dt_rank + 2 * d_state, d_inner]
  Tensor dt_proj;        // [d_inner, dt_rank]
  Tensor dt_proj_bias;   // [d_inner]
  Tensor A_log;          // [d_inner, d_state]
  Tensor D;              // [d_inner]
  Tensor out_proj;       // [d_model, d_inner]
  Tensor out_proj_bias;  // [d_model], present iff proj_bias
  Tensor dt_norm;        // [dt_rank], present iff inner_norms (Jamba's dt_layernorm)
  Tensor b_norm;         // [d_state], present iff inner_norms
  Tensor c_norm;         // [d_state], present iff inner_norms
};

class MambaMixer final : public Mixer {
 public:
  // Checks every weight's shape and dtype against the config; throws Error naming the
  // first one that does not match.
  MambaMixer(const MambaConfig& config, const MambaWeights& weights);

  std::string kind() const override { return "mamba"; }
  int64_t d_model() const override { return config_.d_model; }
  const MambaConfig& config() const { return config_; }
  // The tensors as forward() uses them, for a backend that runs the layer itself (the
  // CUDA decoder): projections as given; A = -exp(A_log) and the rest widened to f32;
  // conv_weight [d_inner, d_conv]. Biases undefined where the config has none.
  struct Prepared {
    Tensor in_proj, in_proj_bias, conv_weight, conv_bias, x_proj, dt_proj, dt_bias, A, D, out_proj, out_proj_bias;
    Tensor dt_norm, b_norm, c_norm;  // undefined without inner_norms
  };
  Prepared prepared() const {
    return {in_proj_, in_proj_bias_, conv_weight_, conv_bias_, x_proj_, dt_proj_, dt_bias_, A_, D_, out_proj_,
            out_proj_bias_, dt_norm_, b_norm_, c_norm_};
  }
  std::unique_ptr<MixerState> new_state(int64_t batch) const override;
  void forward(const Tensor& x, MixerState& state, const Tensor& y) const override;

 private:
  MambaConfig config_;
  Tensor in_proj_, x_proj_, dt_proj_, out_proj_;                  // as given
  Tensor in_proj_bias_, out_proj_bias_, conv_weight_, conv_bias_;  // f32
  Tensor dt_bias_, A_, D_;                                         // f32; A = -exp(A_log)
  Tensor dt_norm_, b_norm_, c_norm_;                               // f32, Jamba only
};

}  // namespace subq
