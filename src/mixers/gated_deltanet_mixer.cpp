#include "src/mixers/gated_deltanet_mixer.h"

#include <cmath>
#include <vector>

#include "src/core/parallel.h"
#include "src/mixers/linear_family_weights.h"
#include "src/ops/common/activations.h"
#include "src/ops/delta/delta_rule.h"
#include "src/ops/conv/causal_conv1d.h"
#include "src/ops/linear/gated_rms_norm.h"
#include "subq/ops.h"

namespace subq::mixers {
namespace {

class GatedDeltaNetState final : public FixedState {
 public:
  GatedDeltaNetState(int64_t batch, const GatedDeltaNetConfig& c)
      : batch_(batch),
        conv(Tensor::zeros(DType::f32, Shape{batch, c.conv_kernel - 1, c.conv_dim()})),
        delta(Tensor::zeros(DType::f32, Shape{batch, c.num_value_heads, c.head_k_dim, c.head_v_dim})) {}
  int64_t batch() const override { return batch_; }
  std::vector<Part> parts() const override { return {{"conv window", conv}, {"delta state", delta}}; }

  int64_t batch_;
  Tensor conv;   // [B, K - 1, conv_dim]
  Tensor delta;  // [B, Hv, dk, dv]
};

}  // namespace

GatedDeltaNetMixer::GatedDeltaNetMixer(const GatedDeltaNetConfig& c, const GatedDeltaNetWeights& w) : cfg_(c) {
  if (c.hidden_size < 1 || c.num_key_heads < 1 || c.num_value_heads < 1 || c.head_k_dim < 1 || c.head_v_dim < 1 ||
      c.conv_kernel < 1 || c.num_value_heads % c.num_key_heads != 0 || c.chunk_size < 1)
    throw Error("GatedDeltaNetMixer: config: expected positive sizes with num_key_heads dividing num_value_heads, got "
                "hidden " + std::to_string(c.hidden_size) + ", key heads " + std::to_string(c.num_key_heads) +
                ", value heads " + std::to_string(c.num_value_heads));
  const int64_t Hv = c.num_value_heads;
  check_projection(w.in_proj_qkvz, Shape{2 * c.key_dim() + 2 * c.value_dim(), c.hidden_size},
                   "GatedDeltaNetMixer: in_proj_qkvz.weight");
  check_projection(w.in_proj_ba, Shape{2 * Hv, c.hidden_size}, "GatedDeltaNetMixer: in_proj_ba.weight");
  check_projection(w.out_proj, Shape{c.hidden_size, c.value_dim()}, "GatedDeltaNetMixer: out_proj.weight");
  qkvz_w_ = w.in_proj_qkvz;
  ba_w_ = w.in_proj_ba;
  out_w_ = w.out_proj;
  conv_w_ = f32_param(w.conv1d_weight, Shape{c.conv_dim(), c.conv_kernel}, "GatedDeltaNetMixer: conv1d.weight");
  dt_bias_ = f32_param(w.dt_bias, Shape{Hv}, "GatedDeltaNetMixer: dt_bias");
  A_ = f32_param(w.A_log, Shape{Hv}, "GatedDeltaNetMixer: A_log");
  for (int64_t h = 0; h < Hv; ++h) A_.mutable_data<float>()[h] = -std::exp(A_.data<float>()[h]);
  norm_w_ = f32_param(w.norm_weight, Shape{c.head_v_dim}, "GatedDeltaNetMixer: norm.weight");
}

std::unique_ptr<MixerState> GatedDeltaNetMixer::new_state(int64_t batch) const {
  if (batch < 1) throw Error("GatedDeltaNetMixer: new_state: expected batch >= 1, got " + std::to_string(batch));
  return std::make_unique<GatedDeltaNetState>(batch, cfg_);
}

void GatedDeltaNetMixer::forward(const Tensor& x, MixerState& state_base, const Tensor& y) const {
  check_mixer_io(*this, x, state_base, y);
  auto* state = dynamic_cast<GatedDeltaNetState*>(&state_base);
  if (!state) throw Error("GatedDeltaNetMixer: forward: state was not made by a GatedDeltaNetMixer");
  const GatedDeltaNetConfig& c = cfg_;
  const int64_t B = x.dim(0), T = x.dim(1), R = B * T;
  const int64_t Hk = c.num_key_heads, Hv = c.num_value_heads, r = Hv / Hk, dk = c.head_k_dim, dv = c.head_v_dim;
  const int64_t KD = c.key_dim(), VD = c.value_dim(), CD = c.conv_dim();
  const int64_t per_head = 2 * dk + 2 * r * dv, QKVZ = Hk * per_head;

  const Tensor qkvz = Tensor::empty(DType::f32, Shape{B, T, QKVZ});
  const Tensor ba = Tensor::empty(DType::f32, Shape{B, T, 2 * Hv});
  const LinearOutput projections[] = {{qkvz_w_, Tensor(), qkvz}, {ba_w_, Tensor(), ba}};
  linear_group(x, projections);

  // Un-group the projection: conv input [q (all key heads) | k | v], z [Hv, dv],
  // beta and log-gate [Hv] (value head kh * r + j belongs to key head kh).
  const Tensor mixed = Tensor::empty(DType::f32, Shape{B, T, CD});
  const Tensor z = Tensor::empty(DType::f32, Shape{R, VD});
  const Tensor beta = Tensor::empty(DType::f32, Shape{B, T, Hv});
  const Tensor log_gate = Tensor::empty(DType::f32, Shape{B, T, Hv});
  {
    const float* pq = qkvz.data<float>();
    const float* pb = ba.data<float>();
    float* pm = mixed.mutable_data<float>();
    float* pz = z.mutable_data<float>();
    float* pbeta = beta.mutable_data<float>();
    float* pg = log_gate.mutable_data<float>();
    const float* A = A_.data<float>();
    const float* dtb = dt_bias_.data<float>();
    parallel_for(R, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const float* src = pq + row * QKVZ;
        float* m = pm + row * CD;
        for (int64_t kh = 0; kh < Hk; ++kh) {
          const float* g = src + kh * per_head;
          std::copy_n(g, dk, m + kh * dk);
          std::copy_n(g + dk, dk, m + KD + kh * dk);
          std::copy_n(g + 2 * dk, r * dv, m + 2 * KD + kh * r * dv);
          std::copy_n(g + 2 * dk + r * dv, r * dv, pz + row * VD + kh * r * dv);
          for (int64_t j = 0; j < r; ++j) {
            const int64_t h = kh * r + j;
            const float b = pb[row * 2 * Hv + kh * 2 * r + j];
            const float a = pb[row * 2 * Hv + kh * 2 * r + r + j];
            pbeta[row * Hv + h] = 1.f / (1.f + std::exp(-b));
            float sp = a + dtb[h];
            ops::softplus(&sp, &sp, 1);
            pg[row * Hv + h] = A[h] * sp;
          }
        }
      }
    });
  }
  const Tensor conv_out = Tensor::empty(DType::f32, Shape{B, T, CD});
  ops::causal_conv1d(mixed, conv_w_, Tensor(), state->conv, true, conv_out);

  const Tensor q = Tensor::empty(DType::f32, Shape{B, T, Hk, dk});
  const Tensor k = Tensor::empty(DType::f32, Shape{B, T, Hk, dk});
  const Tensor v = Tensor::empty(DType::f32, Shape{B, T, Hv, dv});
  {
    const float* pc = conv_out.data<float>();
    float *pq = q.mutable_data<float>(), *pk = k.mutable_data<float>(), *pv = v.mutable_data<float>();
    parallel_for(R, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        std::copy_n(pc + row * CD, KD, pq + row * KD);
        std::copy_n(pc + row * CD + KD, KD, pk + row * KD);
        std::copy_n(pc + row * CD + 2 * KD, VD, pv + row * VD);
      }
    });
  }
  const Tensor o = Tensor::empty(DType::f32, Shape{B, T, Hv, dv});
  ops::DeltaRuleOptions opt;
  opt.l2_normalize_qk = true;
  opt.scale = 1.f / std::sqrt(static_cast<float>(dk));
  opt.chunk = c.chunk_size;
  ops::delta_rule(q, k, v, beta, log_gate, state->delta, o, opt);

  ops::gated_rms_norm_rows(o.mutable_data<float>(), z.data<float>(), dv, norm_w_.data<float>(), R * Hv, dv, dv,
                           c.rms_norm_eps, ops::GateOrder::norm_then_gate);
  linear(o.view(Shape{B, T, VD}), out_w_, Tensor(), y);
}

}  // namespace subq::mixers
