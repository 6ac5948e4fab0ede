// Mamba-2 mixer with the structure of Hugging Face `Mamba2Mixer` (torch_forward):
//   [z | xBC | dt] = in_proj(x)
//   xBC = silu(causal_conv1d(xBC) + conv_bias);  [xs | B | C] = xBC
//   dt  = clamp(softplus(dt + dt_bias), time_step_limit);  A = -exp(A_log)
//   y   = SSD(xs (H heads of head_dim), dt, A, B, C (G groups of N)) + D * xs
//   out = out_proj(rms_norm_groups(y * silu(z)) * norm_weight),  groups of I / G
// State per sequence: the conv window (K - 1 inputs of xBC) and the SSD state [H, N, P].
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include "subq/mixer.h"

namespace subq::mixers {

struct Mamba2Config {
  int64_t hidden_size = 0;     // D
  int64_t num_heads = 0;       // H
  int64_t head_dim = 64;       // P; intermediate_size I = H * P
  int64_t n_groups = 1;        // G
  int64_t state_size = 128;    // N
  int64_t conv_kernel = 4;     // K
  float layer_norm_epsilon = 1e-5f;
  float time_step_limit_min = 0.f;
  float time_step_limit_max = std::numeric_limits<float>::infinity();
  int64_t chunk_size = 64;     // chunk of the SSD kernel (a speed knob, not a model parameter)
  int64_t intermediate_size() const { return num_heads * head_dim; }
  int64_t conv_dim() const { return intermediate_size() + 2 * n_groups * state_size; }
  int64_t in_proj_size() const { return 2 * intermediate_size() + 2 * n_groups * state_size + num_heads; }
};

// Hugging Face tensor names in comments. Projection weights f32/bf16/f16; the others
// any float dtype (copied to f32). Optional biases may be undefined.
struct Mamba2Weights {
  Tensor in_proj_weight;   // in_proj.weight [in_proj_size, D]
  Tensor in_proj_bias;     // in_proj.bias [in_proj_size] (use_bias)
  Tensor conv1d_weight;    // conv1d.weight [conv_dim, 1, K]
  Tensor conv1d_bias;      // conv1d.bias [conv_dim] (use_conv_bias)
  Tensor dt_bias;          // dt_bias [H]
  Tensor A_log;            // A_log [H]
  Tensor D;                // D [H]
  Tensor norm_weight;      // norm.weight [I]
  Tensor out_proj_weight;  // out_proj.weight [D, I]
  Tensor out_proj_bias;    // out_proj.bias [D] (use_bias)
};

class Mamba2Mixer final : public Mixer {
 public:
  Mamba2Mixer(const Mamba2Config& config, const Mamba2Weights& weights);
  std::string kind() const override { return "mamba2"; }
  int64_t d_model() const override { return cfg_.hidden_size; }
  std::unique_ptr<MixerState> new_state(int64_t batch) const override;
  void forward(const Tensor& x, MixerState& state, const Tensor& y) const override;

  const Mamba2Config& config() const { return cfg_; }
  // The tensors as forward() uses them, for a backend that runs the layer itself (the
  // CUDA decoder): projections as given, the rest f32, A = -exp(A_log), conv weight
  // [conv_dim, K]; optional biases undefined when absent.
  struct Prepared {
    Tensor in_proj_w, in_proj_b, conv_w, conv_b, dt_bias, A, D, norm_w, out_proj_w, out_proj_b;
  };
  Prepared prepared() const {
    return {in_proj_w_, in_proj_b_, conv_w_, conv_b_, dt_bias_, A_, D_, norm_w_, out_proj_w_, out_proj_b_};
  }

 private:
  Mamba2Config cfg_;
  Tensor in_proj_w_, in_proj_b_, conv_w_, conv_b_, dt_bias_, A_, D_, norm_w_, out_proj_w_, out_proj_b_;
};

}  // namespace subq::mixers
