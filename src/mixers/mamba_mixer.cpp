#include "src/mixers/mamba_mixer.h"

#include <cmath>
#include <string>
#include <vector>

#include "src/core/parallel.h"
#include "src/ops/common/gemm.h"
#include "src/ops/common/norm.h"
#include "src/ops/conv/causal_conv1d.h"
#include "src/ops/ssm/selective_scan.h"
#include "subq/ops.h"

namespace subq {
namespace {

class MambaState final : public FixedState {
 public:
  MambaState(int64_t batch, const MambaConfig& c)
      : batch_(batch),
        conv_(Tensor::zeros(DType::f32, {batch, c.d_conv - 1, c.d_inner})),
        ssm_(Tensor::zeros(DType::f32, {batch, c.d_inner, c.d_state})) {}
  int64_t batch() const override { return batch_; }
  std::vector<Part> parts() const override { return {{"conv window", conv_}, {"SSM state", ssm_}}; }
  const Tensor& conv() const { return conv_; }
  const Tensor& ssm() const { return ssm_; }

 private:
  int64_t batch_;
  Tensor conv_;  // [B, d_conv - 1, d_inner]: the last conv inputs
  Tensor ssm_;   // [B, d_inner, d_state]
};

std::string name(const char* field) { return std::string("MambaMixer: weight ") + field; }

void check_projection(const Tensor& w, int64_t rows, int64_t cols, const char* field) {
  if (!w.defined()) throw Error(name(field) + " is missing");
  if (w.dtype() != DType::f32 && w.dtype() != DType::bf16 && w.dtype() != DType::f16)
    throw Error(name(field) + " must be f32, bf16 or f16, found " + w.str());
  check_contiguous(w, name(field).c_str());
  check_shape(w, Shape{rows, cols}, name(field).c_str());
}

// A contiguous f32 copy of a small per-channel tensor, checked against `shape` (or `alt`);
// undefined when the config says the tensor is absent.
Tensor small_f32(const Tensor& t, const Shape& shape, const char* field, bool present, const Shape* alt = nullptr) {
  if (!present) {
    if (t.defined()) throw Error(name(field) + " is given but the config says it is absent");
    return Tensor();
  }
  if (!t.defined()) throw Error(name(field) + " is missing");
  if (!(t.shape() == shape) && !(alt && t.shape() == *alt))
    throw Error(name(field) + " must be " + shape.str() + ", found " + t.str());
  if (t.dtype() != DType::f32 && t.dtype() != DType::bf16 && t.dtype() != DType::f16)
    throw Error(name(field) + " must be f32, bf16 or f16, found " + t.str());
  Tensor out = Tensor::empty(DType::f32, shape);
  convert(t.contiguous(), out);
  return out;
}

void add_bias(float* y, int64_t rows, int64_t cols, const float* bias) {
  parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c) y[r * cols + c] += bias[c];
  });
}

}  // namespace

MambaMixer::MambaMixer(const MambaConfig& c, const MambaWeights& w) : config_(c) {
  if (c.d_model < 1 || c.d_inner < 1 || c.dt_rank < 1)
    throw Error("MambaMixer: d_model, d_inner and dt_rank must be >= 1, found " + std::to_string(c.d_model) + ", " +
                std::to_string(c.d_inner) + ", " + std::to_string(c.dt_rank));
  if (c.d_state < 1 || c.d_state > ops::kScanMaxState)
    throw Error("MambaMixer: d_state must be in [1, 256], found " + std::to_string(c.d_state));
  if (c.d_conv < ops::kConvMinWidth || c.d_conv > ops::kConvMaxWidth)
    throw Error("MambaMixer: d_conv must be in [2, 8], found " + std::to_string(c.d_conv));
  const int64_t I = c.d_inner, N = c.d_state, R = c.dt_rank;
  check_projection(w.in_proj, 2 * I, c.d_model, "in_proj");
  check_projection(w.x_proj, R + 2 * N, I, "x_proj");
  check_projection(w.dt_proj, I, R, "dt_proj");
  check_projection(w.out_proj, c.d_model, I, "out_proj");
  in_proj_ = w.in_proj;
  x_proj_ = w.x_proj;
  dt_proj_ = w.dt_proj;
  out_proj_ = w.out_proj;
  in_proj_bias_ = small_f32(w.in_proj_bias, Shape{2 * I}, "in_proj_bias", c.proj_bias);
  out_proj_bias_ = small_f32(w.out_proj_bias, Shape{c.d_model}, "out_proj_bias", c.proj_bias);
  const Shape conv_alt{I, c.d_conv};
  conv_weight_ = small_f32(w.conv_weight, Shape{I, 1, c.d_conv}, "conv_weight", true, &conv_alt).view({I, c.d_conv});
  conv_bias_ = small_f32(w.conv_bias, Shape{I}, "conv_bias", c.conv_bias);
  dt_bias_ = small_f32(w.dt_proj_bias, Shape{I}, "dt_proj_bias", true);
  D_ = small_f32(w.D, Shape{I}, "D", true);
  A_ = small_f32(w.A_log, Shape{I, N}, "A_log", true);
  dt_norm_ = small_f32(w.dt_norm, Shape{c.dt_rank}, "dt_norm", c.inner_norms);
  b_norm_ = small_f32(w.b_norm, Shape{N}, "b_norm", c.inner_norms);
  c_norm_ = small_f32(w.c_norm, Shape{N}, "c_norm", c.inner_norms);
  float* a = A_.mutable_data<float>();
  for (int64_t i = 0; i < I * N; ++i) a[i] = -std::exp(a[i]);
}

std::unique_ptr<MixerState> MambaMixer::new_state(int64_t batch) const {
  if (batch < 1) throw Error("MambaMixer: batch must be >= 1, found " + std::to_string(batch));
  return std::make_unique<MambaState>(batch, config_);
}

void MambaMixer::forward(const Tensor& x, MixerState& state_base, const Tensor& y) const {
  check_mixer_io(*this, x, state_base, y);
  auto* state = dynamic_cast<MambaState*>(&state_base);
  if (!state) throw Error("MambaMixer forward: state was not made by a MambaMixer");
  const MambaConfig& c = config_;
  if (state->ssm().dim(1) != c.d_inner || state->ssm().dim(2) != c.d_state || state->conv().dim(1) != c.d_conv - 1)
    throw Error("MambaMixer forward: state was made by a mixer of another shape");
  const int64_t B = x.dim(0), T = x.dim(1), M = B * T;
  const int64_t I = c.d_inner, N = c.d_state, R = c.dt_rank, P = R + 2 * N;

  // Workspace for this call: projections, conv output, dt, scan output.
  const Tensor proj = Tensor::empty(DType::f32, {M, 2 * I});
  const Tensor xc = Tensor::empty(DType::f32, {M, I});
  const Tensor xdbl = Tensor::empty(DType::f32, {M, P});
  const Tensor dt = Tensor::empty(DType::f32, {M, I});
  const Tensor ys = Tensor::empty(DType::f32, {M, I});
  float* pp = proj.mutable_data<float>();
  float* pxc = xc.mutable_data<float>();
  float* pdbl = xdbl.mutable_data<float>();
  float* pdt = dt.mutable_data<float>();
  float* pys = ys.mutable_data<float>();

  ops::gemm_xwt(M, 2 * I, c.d_model, x.data<float>(), c.d_model, in_proj_.raw_data(), in_proj_.dtype(), c.d_model, pp,
                2 * I, false);
  if (in_proj_bias_.defined()) add_bias(pp, M, 2 * I, in_proj_bias_.data<float>());

  ops::causal_conv1d(B, T, I, static_cast<int>(c.d_conv), ops::SeqView{pp, T * 2 * I, 2 * I},
                     conv_weight_.data<float>(), conv_bias_.defined() ? conv_bias_.data<float>() : nullptr,
                     state->conv().mutable_data<float>(), true, ops::MutSeqView{pxc, T * I, I});

  ops::gemm_xwt(M, P, I, pxc, I, x_proj_.raw_data(), x_proj_.dtype(), I, pdbl, P, false);
  if (c.inner_norms) {
    parallel_for(M, 16, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        float* row = pdbl + m * P;
        ops::rms_norm_row(row, dt_norm_.data<float>(), c.inner_norm_eps, row, static_cast<size_t>(R));
        ops::rms_norm_row(row + R, b_norm_.data<float>(), c.inner_norm_eps, row + R, static_cast<size_t>(N));
        ops::rms_norm_row(row + R + N, c_norm_.data<float>(), c.inner_norm_eps, row + R + N, static_cast<size_t>(N));
      }
    });
  }
  ops::gemm_xwt(M, I, R, pdbl, P, dt_proj_.raw_data(), dt_proj_.dtype(), R, pdt, I, false);

  ops::SelectiveScanArgs a;
  a.batch = B;
  a.seqlen = T;
  a.channels = I;
  a.state_dim = N;
  a.groups = 1;
  a.x = {pxc, T * I, I};
  a.dt = {pdt, T * I, I};
  a.dt_bias = dt_bias_.data<float>();
  a.dt_softplus = true;
  a.A = A_.data<float>();
  a.B = {pdbl + R, T * P, P};
  a.C = {pdbl + R + N, T * P, P};
  a.D = D_.data<float>();
  a.z = {pp + I, T * 2 * I, 2 * I};
  a.h = state->ssm().mutable_data<float>();
  a.y = {pys, T * I, I};
  ops::selective_scan(a);

  ops::gemm_xwt(M, c.d_model, I, pys, I, out_proj_.raw_data(), out_proj_.dtype(), I, y.mutable_data<float>(),
                c.d_model, false);
  if (out_proj_bias_.defined()) add_bias(y.mutable_data<float>(), M, c.d_model, out_proj_bias_.data<float>());
}

}  // namespace subq
