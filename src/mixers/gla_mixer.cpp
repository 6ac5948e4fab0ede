#include "src/mixers/gla_mixer.h"

#include <cmath>
#include <vector>

#include "src/core/parallel.h"
#include "src/mixers/linear_family_weights.h"
#include "src/ops/common/activations.h"
#include "src/ops/linear/gated_linear_attention.h"
#include "src/ops/linear/gated_rms_norm.h"
#include "subq/ops.h"

namespace subq::mixers {
namespace {

class GlaState final : public FixedState {
 public:
  GlaState(int64_t batch, const GlaConfig& c)
      : batch_(batch),
        S(Tensor::zeros(DType::f32, Shape{batch, c.num_heads, c.key_dim / c.num_heads, c.value_dim / c.num_heads})) {}
  int64_t batch() const override { return batch_; }
  std::vector<Part> parts() const override { return {{"matrix state", S}}; }

  int64_t batch_;
  Tensor S;  // [B, H, dk, dv]
};

}  // namespace

GlaMixer::GlaMixer(const GlaConfig& c, const GlaWeights& w) : cfg_(c), w_(w) {
  if (c.hidden_size < 1 || c.num_heads < 1 || c.key_dim < 1 || c.value_dim < 1 || c.key_dim % c.num_heads != 0 ||
      c.value_dim % c.num_heads != 0 || c.gate_low_rank_dim < 1 || !(c.gate_logit_normalizer > 0) || c.chunk_size < 1)
    throw Error("GlaMixer: config: expected positive sizes with num_heads dividing key_dim and value_dim, got hidden " +
                std::to_string(c.hidden_size) + ", heads " + std::to_string(c.num_heads) + ", key_dim " +
                std::to_string(c.key_dim) + ", value_dim " + std::to_string(c.value_dim));
  const int64_t D = c.hidden_size;
  check_projection(w.q_proj, Shape{c.key_dim, D}, "GlaMixer: q_proj.weight");
  check_projection(w.k_proj, Shape{c.key_dim, D}, "GlaMixer: k_proj.weight");
  check_projection(w.v_proj, Shape{c.value_dim, D}, "GlaMixer: v_proj.weight");
  check_projection(w.gk_proj_0, Shape{c.gate_low_rank_dim, D}, "GlaMixer: gk_proj.0.weight");
  check_projection(w.gk_proj_1, Shape{c.key_dim, c.gate_low_rank_dim}, "GlaMixer: gk_proj.1.weight");
  check_projection(w.g_proj, Shape{c.value_dim, D}, "GlaMixer: g_proj.weight");
  check_projection(w.o_proj, Shape{D, c.value_dim}, "GlaMixer: o_proj.weight");
  w_.gk_bias = f32_param(w.gk_bias, Shape{c.key_dim}, "GlaMixer: gk_proj.1.bias");
  w_.g_norm = f32_param(w.g_norm, Shape{c.value_dim / c.num_heads}, "GlaMixer: g_norm_swish_gate.weight");
}

std::unique_ptr<MixerState> GlaMixer::new_state(int64_t batch) const {
  if (batch < 1) throw Error("GlaMixer: new_state: expected batch >= 1, got " + std::to_string(batch));
  return std::make_unique<GlaState>(batch, cfg_);
}

void GlaMixer::forward(const Tensor& x, MixerState& state_base, const Tensor& y) const {
  check_mixer_io(*this, x, state_base, y);
  auto* state = dynamic_cast<GlaState*>(&state_base);
  if (!state) throw Error("GlaMixer: forward: state was not made by a GlaMixer");
  const GlaConfig& c = cfg_;
  const int64_t B = x.dim(0), T = x.dim(1), H = c.num_heads, dk = c.key_dim / H, dv = c.value_dim / H;
  const Tensor q = Tensor::empty(DType::f32, Shape{B, T, H, dk});
  const Tensor k = Tensor::empty(DType::f32, Shape{B, T, H, dk});
  const Tensor v = Tensor::empty(DType::f32, Shape{B, T, H, dv});
  const Tensor g = Tensor::empty(DType::f32, Shape{B, T, c.value_dim});
  const Tensor low = Tensor::empty(DType::f32, Shape{B, T, c.gate_low_rank_dim});
  const Tensor gk = Tensor::empty(DType::f32, Shape{B, T, H, dk});
  const LinearOutput projections[] = {{w_.q_proj, Tensor(), q.view(Shape{B, T, c.key_dim})},
                                      {w_.k_proj, Tensor(), k.view(Shape{B, T, c.key_dim})},
                                      {w_.v_proj, Tensor(), v.view(Shape{B, T, c.value_dim})},
                                      {w_.g_proj, Tensor(), g},
                                      {w_.gk_proj_0, Tensor(), low}};
  linear_group(x, projections);
  linear(low, w_.gk_proj_1, w_.gk_bias, gk.view(Shape{B, T, c.key_dim}));
  // logsigmoid(u) / normaliser = -softplus(-u) / normaliser, always <= 0.
  float* pg = gk.mutable_data<float>();
  const float inv_norm = -1.f / c.gate_logit_normalizer;
  parallel_for(B * T, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = pg + r * c.key_dim;
      for (int64_t i = 0; i < c.key_dim; ++i) row[i] = -row[i];
      ops::softplus(row, row, static_cast<size_t>(c.key_dim));
      for (int64_t i = 0; i < c.key_dim; ++i) row[i] *= inv_norm;
    }
  });
  ops::LinearAttentionOptions opt;
  opt.gate = ops::LinearGate::per_token_vector;
  opt.scale = 1.f / std::sqrt(static_cast<float>(dk));
  opt.chunk = c.chunk_size;
  const Tensor o = Tensor::empty(DType::f32, Shape{B, T, H, dv});
  ops::gated_linear_attention(q, k, v, gk, state->S, o, opt);
  ops::gated_rms_norm_rows(o.mutable_data<float>(), g.data<float>(), dv, w_.g_norm.data<float>(), B * T * H, dv, dv,
                           c.norm_eps, ops::GateOrder::norm_then_gate);
  linear(o.view(Shape{B, T, c.value_dim}), w_.o_proj, Tensor(), y);
}

}  // namespace subq::mixers
