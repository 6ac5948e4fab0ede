#include "src/mixers/mamba2_mixer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "src/core/parallel.h"
#include "src/mixers/linear_family_weights.h"
#include "src/ops/common/activations.h"
#include "src/ops/conv/causal_conv1d.h"
#include "src/ops/linear/gated_rms_norm.h"
#include "src/ops/linear/ssd.h"
#include "subq/ops.h"

namespace subq::mixers {
namespace {

class Mamba2State final : public FixedState {
 public:
  Mamba2State(int64_t batch, const Mamba2Config& c)
      : batch_(batch),
        conv(Tensor::zeros(DType::f32, Shape{batch, c.conv_kernel - 1, c.conv_dim()})),
        ssm(Tensor::zeros(DType::f32, Shape{batch, c.num_heads, c.state_size, c.head_dim})) {}
  int64_t batch() const override { return batch_; }
  std::vector<Part> parts() const override { return {{"conv window", conv}, {"SSD state", ssm}}; }

  int64_t batch_;
  Tensor conv;  // last K - 1 inputs of the conv, [B, K - 1, conv_dim]
  Tensor ssm;   // [B, H, N, P]
};

// Copies columns [c0, c0 + n) of the rows of src [R, ld] into dst [R, n].
void copy_columns(const float* src, int64_t ld, int64_t c0, int64_t n, int64_t rows, float* dst) {
  parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::copy_n(src + r * ld + c0, n, dst + r * n);
  });
}

}  // namespace

Mamba2Mixer::Mamba2Mixer(const Mamba2Config& c, const Mamba2Weights& w) : cfg_(c) {
  if (c.hidden_size < 1 || c.num_heads < 1 || c.head_dim < 1 || c.n_groups < 1 || c.state_size < 1 ||
      c.conv_kernel < 1 || c.num_heads % c.n_groups != 0 || c.chunk_size < 1)
    throw Error("Mamba2Mixer: config: expected positive sizes with n_groups dividing num_heads, got hidden " +
                std::to_string(c.hidden_size) + ", heads " + std::to_string(c.num_heads) + ", head_dim " +
                std::to_string(c.head_dim) + ", groups " + std::to_string(c.n_groups) + ", state " +
                std::to_string(c.state_size) + ", conv " + std::to_string(c.conv_kernel));
  const int64_t I = c.intermediate_size(), H = c.num_heads;
  check_projection(w.in_proj_weight, Shape{c.in_proj_size(), c.hidden_size}, "Mamba2Mixer: in_proj.weight");
  check_projection(w.out_proj_weight, Shape{c.hidden_size, I}, "Mamba2Mixer: out_proj.weight");
  in_proj_w_ = w.in_proj_weight;
  out_proj_w_ = w.out_proj_weight;
  in_proj_b_ = optional_f32_param(w.in_proj_bias, Shape{c.in_proj_size()}, "Mamba2Mixer: in_proj.bias");
  out_proj_b_ = optional_f32_param(w.out_proj_bias, Shape{c.hidden_size}, "Mamba2Mixer: out_proj.bias");
  conv_w_ = f32_param(w.conv1d_weight, Shape{c.conv_dim(), c.conv_kernel}, "Mamba2Mixer: conv1d.weight");
  conv_b_ = optional_f32_param(w.conv1d_bias, Shape{c.conv_dim()}, "Mamba2Mixer: conv1d.bias");
  dt_bias_ = f32_param(w.dt_bias, Shape{H}, "Mamba2Mixer: dt_bias");
  A_ = f32_param(w.A_log, Shape{H}, "Mamba2Mixer: A_log");
  for (int64_t h = 0; h < H; ++h) A_.mutable_data<float>()[h] = -std::exp(A_.data<float>()[h]);
  D_ = f32_param(w.D, Shape{H}, "Mamba2Mixer: D");
  norm_w_ = f32_param(w.norm_weight, Shape{I}, "Mamba2Mixer: norm.weight");
}

std::unique_ptr<MixerState> Mamba2Mixer::new_state(int64_t batch) const {
  if (batch < 1) throw Error("Mamba2Mixer: new_state: expected batch >= 1, got " + std::to_string(batch));
  return std::make_unique<Mamba2State>(batch, cfg_);
}

void Mamba2Mixer::forward(const Tensor& x, MixerState& state_base, const Tensor& y) const {
  check_mixer_io(*this, x, state_base, y);
  auto* state = dynamic_cast<Mamba2State*>(&state_base);
  if (!state) throw Error("Mamba2Mixer: forward: state was not made by a Mamba2Mixer");
  const Mamba2Config& c = cfg_;
  const int64_t B = x.dim(0), T = x.dim(1), R = B * T;
  const int64_t I = c.intermediate_size(), H = c.num_heads, P = c.head_dim, G = c.n_groups, N = c.state_size;
  const int64_t CD = c.conv_dim(), PS = c.in_proj_size();

  const Tensor proj = Tensor::empty(DType::f32, Shape{B, T, PS});
  linear(x, in_proj_w_, in_proj_b_, proj);
  const float* pp = proj.data<float>();

  // Short conv + SiLU over xBC, read in place from the projection.
  const Tensor xbc = Tensor::empty(DType::f32, Shape{B, T, CD});
  ops::causal_conv1d(proj.slice(2, I, I + CD), conv_w_, conv_b_, state->conv, true, xbc);

  // dt = clamp(softplus(dt + dt_bias)).
  const Tensor dt = Tensor::empty(DType::f32, Shape{B, T, H});
  float* dtp = dt.mutable_data<float>();
  const float* dtb = dt_bias_.data<float>();
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t h = 0; h < H; ++h) dtp[r * H + h] = pp[r * PS + I + CD + h] + dtb[h];
    ops::softplus(dtp + r * H, dtp + r * H, static_cast<size_t>(H));
    for (int64_t h = 0; h < H; ++h)
      dtp[r * H + h] = std::clamp(dtp[r * H + h], c.time_step_limit_min, c.time_step_limit_max);
  }

  const Tensor xs = Tensor::empty(DType::f32, Shape{B, T, H, P});
  const Tensor Bm = Tensor::empty(DType::f32, Shape{B, T, G, N});
  const Tensor Cm = Tensor::empty(DType::f32, Shape{B, T, G, N});
  copy_columns(xbc.data<float>(), CD, 0, I, R, xs.mutable_data<float>());
  copy_columns(xbc.data<float>(), CD, I, G * N, R, Bm.mutable_data<float>());
  copy_columns(xbc.data<float>(), CD, I + G * N, G * N, R, Cm.mutable_data<float>());
  const Tensor ys = Tensor::empty(DType::f32, Shape{B, T, H, P});
  ops::ssd(xs, dt, A_, Bm, Cm, D_, state->ssm, ys, c.chunk_size);

  // Gated RMSNorm with the gate z = proj[..., :I], in place on ys.
  ops::gated_rms_norm_rows(ys.mutable_data<float>(), pp, PS, norm_w_.data<float>(), R, I, I / G, c.layer_norm_epsilon,
                           ops::GateOrder::gate_then_norm);
  linear(ys.view(Shape{B, T, I}), out_proj_w_, out_proj_b_, y);
}

}  // namespace subq::mixers
