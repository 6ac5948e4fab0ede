// A mixture of experts runs one of two ways. Few tokens (decode): routes chosen on the
// GPU and every (token, expert) pair's matmuls as matrix-vector products over stacked
// expert weights (src/models/moe_cuda.h); nothing comes back to the host, so a decode
// graph can hold the layer. Many tokens (prefill): the router's outputs come back, the
// CPU's own rule routes them, and every expert runs once as a GEMM on its tokens' rows
// gathered together.
#include "src/models/feed_forward_cuda.h"

#include <utility>
#include <vector>

#include "src/core/cuda/device.h"
#include "src/models/device_linear.h"
#include "src/models/moe_cuda.h"
#include "src/ops/common/cuda_ops.h"

namespace subq {
namespace {

class DeviceMlp final : public DeviceFeedForward {
 public:
  // first: the gate and up projections stacked (one matmul) when gated, up when plain.
  DeviceMlp(DeviceLinear first, DeviceLinear down, bool gated, Activation act)
      : first_(std::move(first)), down_(std::move(down)), gated_(gated), act_(act) {}
  DType input_dtype() const override { return first_.input_dtype(); }
  void forward(const Tensor& x, const Tensor& y) const override {
    const int64_t T = x.dim(0), F = down_.w.dim(1);
    const Tensor h = cuda::empty(DType::f32, {T, first_.w.dim(0)}), act = cuda::empty(down_.input_dtype(), {T, F});
    first_.apply(x, h);
    if (gated_) cuda::gated_activation(act_, h, act);
    else cuda::activation(act_, h, act);
    down_.apply(act, y);
  }

 private:
  DeviceLinear first_, down_;
  bool gated_;
  Activation act_;
};

FeedForward::Weights mlp_weights(const FeedForward& f, const std::string& where) {
  FeedForward::Weights w = f.weights();
  if (w.kind == FeedForward::Weights::Kind::none)
    throw Error("device cuda: " + where + ": a feed-forward of a kind the GPU decoder does not run");
  return w;
}

// The host tensors of an MLP's first matmul: gate and up stacked when gated.
std::pair<Tensor, Tensor> first_matmul(const FeedForward::Weights& m, const std::string& where) {
  if (m.kind == FeedForward::Weights::Kind::gated)
    return stack_rows({{m.w.gate, m.w.gate_bias}, {m.w.up, m.w.up_bias}}, where);
  return {m.w.up, m.w.up_bias};
}

std::unique_ptr<DeviceMlp> device_mlp(const FeedForward& f, const std::string& where) {
  const FeedForward::Weights m = mlp_weights(f, where);
  const auto [first, first_bias] = first_matmul(m, where);
  return std::make_unique<DeviceMlp>(DeviceLinear(first, first_bias), DeviceLinear(m.w.down, m.w.down_bias),
                                     m.kind == FeedForward::Weights::Kind::gated, m.act);
}

// A mixture's experts in GPU memory, stacked along a leading expert dimension as
// cuda::expert_linear reads them: first [E, N, L] (see first_matmul), down [E, L, F],
// biases f32 [E, N] and [E, L] (zeros for an expert without one) or undefined where no
// expert has one. Each expert's DeviceMlp views its slices.
struct StackedExperts {
  Tensor first, first_bias, down, down_bias;
  std::vector<std::unique_ptr<DeviceMlp>> mlps;
  bool gated = false;
  Activation act = Activation::silu;
};

StackedExperts stack_experts(const std::vector<std::unique_ptr<FeedForward>>& experts, const std::string& where) {
  std::vector<FeedForward::Weights> ws;
  for (size_t e = 0; e < experts.size(); ++e) ws.push_back(mlp_weights(*experts[e], where + " expert " + std::to_string(e)));
  const FeedForward::Weights& w0 = ws[0];
  bool first_bias = false, down_bias = false;
  for (size_t e = 0; e < ws.size(); ++e) {
    const GatedWeights& w = ws[e].w;
    if (ws[e].kind != w0.kind || ws[e].act != w0.act || !(w.gate.shape() == w0.w.gate.shape()) ||
        !(w.up.shape() == w0.w.up.shape()) || w.up.dtype() != w0.w.up.dtype() ||
        !(w.down.shape() == w0.w.down.shape()) || w.down.dtype() != w0.w.down.dtype())
      throw Error("device cuda: " + where + ": expert " + std::to_string(e) +
                  " differs from expert 0 in kind, activation, shape or dtype");
    first_bias = first_bias || w.gate_bias.defined() || w.up_bias.defined();
    down_bias = down_bias || w.down_bias.defined();
  }
  const bool gated = w0.kind == FeedForward::Weights::Kind::gated;
  const int64_t E = static_cast<int64_t>(ws.size()), F = w0.w.up.dim(0), N = gated ? w0.w.gate.dim(0) + F : F;
  const int64_t L = w0.w.down.dim(0);
  StackedExperts s;
  s.gated = gated;
  s.act = w0.act;
  s.first = cuda::empty(w0.w.up.dtype(), {E, N, L});
  s.down = cuda::empty(w0.w.down.dtype(), {E, L, w0.w.down.dim(1)});
  if (first_bias) s.first_bias = cuda::empty(DType::f32, {E, N});
  if (down_bias) s.down_bias = cuda::empty(DType::f32, {E, L});
  const auto put = [](const Tensor& host, const Tensor& stack, int64_t e, int64_t n) {
    if (!stack.defined()) return;
    const Tensor src = !host.defined() ? Tensor::zeros(DType::f32, {n}) : host.is_contiguous() ? host : host.contiguous();
    cuda::copy(src, stack.select(0, e));
  };
  // One expert's host copies at a time.
  for (int64_t e = 0; e < E; ++e) {
    const FeedForward::Weights& w = ws[static_cast<size_t>(e)];
    const auto [first, bias] = first_matmul(w, where + " expert " + std::to_string(e));
    put(first, s.first, e, N);
    put(bias, s.first_bias, e, N);
    put(w.w.down, s.down, e, L);
    put(w.w.down_bias, s.down_bias, e, L);
    const auto slice = [e](const Tensor& t) { return t.defined() ? t.select(0, e) : Tensor(); };
    DeviceLinear f, d;
    f.w = slice(s.first), f.bias = slice(s.first_bias);
    d.w = slice(s.down), d.bias = slice(s.down_bias);
    s.mlps.push_back(std::make_unique<DeviceMlp>(f, d, s.gated, s.act));
  }
  return s;
}

class DeviceMixture final : public DeviceFeedForward {
 public:
  DeviceMixture(const MixtureOfExperts& m, const std::string& where) {
    const MixtureOfExperts::Parts p = m.parts();
    rule_ = p.rule;
    correction_bias_ = upload_or_empty(p.rule.correction_bias);
    router_ = {p.router, Tensor()};
    experts_ = stack_experts(*p.experts, where);
    if (p.latent_in.defined()) {
      latent_in_ = {p.latent_in, Tensor()};
      latent_out_ = {p.latent_out, Tensor()};
    }
    if (p.shared) shared_ = device_mlp(*p.shared, where + " shared expert");
    // x reaches the router, the shared expert and (without latents) the experts as it is.
    const auto same_dtype = [&](DType d, const std::string& what) {
      if (d != input_dtype()) throw Error("device cuda: " + where + ": the router and the " + what + " differ in dtype");
    };
    same_dtype((latent_in_.w.defined() ? latent_in_.w : experts_.first).dtype(),
               latent_in_.w.defined() ? "latent projection" : "experts");
    if (shared_) same_dtype(shared_->input_dtype(), "shared expert");
  }
  DType input_dtype() const override { return router_.input_dtype(); }

  void forward(const Tensor& x, const Tensor& y) const override {
    const int64_t T = x.dim(0);
    const Tensor logits = cuda::empty(DType::f32, {T, rule_.experts});
    router_.apply(x, logits);
    Tensor in = x, routed = y;
    if (latent_in_.w.defined()) {
      in = cuda::empty(DType::f32, {T, latent_in_.w.dim(0)});
      latent_in_.apply(x, in);
      routed = cuda::empty(DType::f32, in.shape());
    }
    // Pairs read T * top_k experts' weights, the grouped path each chosen expert's once
    // and at most all E: pairs while they read no more. Decode's one token always does.
    if (T * rule_.top_k <= rule_.experts) run_pairs(in, logits, routed);
    else run_grouped(in, logits, routed);
    if (latent_out_.w.defined()) latent_out_.apply(routed, y);
    if (shared_) {
      const Tensor s = cuda::empty(DType::f32, y.shape());
      shared_->forward(x, s);
      cuda::add_into(y, s);
    }
  }

 private:
  void run_pairs(const Tensor& in, const Tensor& logits, const Tensor& routed) const {
    const int64_t T = in.dim(0), k = rule_.top_k, P = T * k;
    const Tensor experts = cuda::empty(DType::i32, {T, k}), weights = cuda::empty(DType::f32, {T, k});
    cuda::route_experts(rule_, correction_bias_, logits, experts, weights);
    const Tensor h = cuda::empty(DType::f32, {P, experts_.first.dim(1)});
    cuda::expert_linear(in, experts, experts_.first, experts_.first_bias, h);
    const Tensor act = cuda::empty(experts_.down.dtype(), {P, experts_.down.dim(2)});
    if (experts_.gated) cuda::gated_activation(experts_.act, h, act);
    else cuda::activation(experts_.act, h, act);
    const Tensor rows = cuda::empty(DType::f32, {P, routed.dim(1)});
    cuda::expert_linear(act, experts, experts_.down, experts_.down_bias, rows);
    cuda::combine_experts(rows, weights, routed);
  }

  void run_grouped(const Tensor& in, const Tensor& logits, const Tensor& routed) const {
    const Routes routes = route_tokens(rule_, cuda::to_host(logits));
    // Every route's token and weight, expert by expert, in one upload each.
    int64_t n = 0;
    for (const auto& r : routes) n += static_cast<int64_t>(r.size());
    Tensor tokens = Tensor::empty(DType::i32, {n}), weights = Tensor::empty(DType::f32, {n});
    int64_t i = 0;
    for (const auto& r : routes)
      for (const auto& [t, w] : r) {
        tokens.mutable_data<int32_t>()[i] = static_cast<int32_t>(t);
        weights.mutable_data<float>()[i++] = w;
      }
    const Tensor dev_tokens = cuda::to_device(tokens), dev_weights = cuda::to_device(weights);
    const int64_t W = in.dim(1);
    cuda::zero(routed);
    int64_t first = 0;
    for (size_t e = 0; e < routes.size(); ++e) {
      const int64_t m = static_cast<int64_t>(routes[e].size());
      if (m == 0) continue;
      const Tensor idx = dev_tokens.slice(0, first, first + m), w = dev_weights.slice(0, first, first + m);
      const Tensor xe = cuda::empty(in.dtype(), {m, W}), ye = cuda::empty(DType::f32, {m, W});
      cuda::gather_rows(in, idx, xe);
      experts_.mlps[e]->forward(xe, ye);
      cuda::scatter_add_rows(ye, idx, w, routed);
      first += m;
    }
  }

  RouteRule rule_;
  Tensor correction_bias_;
  DeviceLinear router_, latent_in_, latent_out_;
  StackedExperts experts_;
  std::unique_ptr<DeviceMlp> shared_;
};

}  // namespace

std::unique_ptr<DeviceFeedForward> make_device_feed_forward(const FeedForward& f, const std::string& where) {
  if (const auto* m = dynamic_cast<const MixtureOfExperts*>(&f)) return std::make_unique<DeviceMixture>(*m, where);
  return device_mlp(f, where);
}

}  // namespace subq
