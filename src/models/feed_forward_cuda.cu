// Mixtures of experts route on the host: the router's outputs come back from the GPU,
// the mixture's own route (the CPU's code, so both devices choose alike given equal
// logits) picks each token's experts, and every expert then runs once on its tokens'
// rows gathered together. That read-back makes a mixture's layer unfit for a captured
// decode graph.
#include "src/models/feed_forward_cuda.h"

#include <functional>
#include <vector>

#include "src/core/cuda/device.h"
#include "src/models/device_linear.h"
#include "src/ops/common/cuda_ops.h"

namespace subq {
namespace {

class DeviceMlp final : public DeviceFeedForward {
 public:
  DeviceMlp(const FeedForward::Weights& m, const std::string& where) : act_(m.act) {
    using Kind = FeedForward::Weights::Kind;
    if (m.kind == Kind::gated) {
      gate_up_ = stacked({{m.w.gate, m.w.gate_bias}, {m.w.up, m.w.up_bias}}, where);
      F_ = m.w.gate.dim(0);
    } else {
      up_ = {m.w.up, m.w.up_bias};
      F_ = m.w.up.dim(0);
    }
    down_ = {m.w.down, m.w.down_bias};
  }
  DType input_dtype() const override { return (gate_up_.w.defined() ? gate_up_ : up_).input_dtype(); }
  void forward(const Tensor& x, const Tensor& y) const override {
    const int64_t T = x.dim(0);
    const Tensor act = cuda::empty(down_.input_dtype(), {T, F_});
    if (gate_up_.w.defined()) {
      const Tensor gu = cuda::empty(DType::f32, {T, 2 * F_});
      gate_up_.apply(x, gu);
      cuda::gated_activation(act_, gu, act);
    } else {
      const Tensor h = cuda::empty(DType::f32, {T, F_});
      up_.apply(x, h);
      cuda::activation(act_, h, act);
    }
    down_.apply(act, y);
  }

 private:
  DeviceLinear gate_up_, up_, down_;  // gated: gate and up stacked (one matmul); plain: up
  Activation act_;
  int64_t F_ = 0;
};

std::unique_ptr<DeviceMlp> device_mlp(const FeedForward& f, const std::string& where) {
  const FeedForward::Weights w = f.weights();
  if (w.kind == FeedForward::Weights::Kind::none)
    throw Error("device cuda: " + where + ": a feed-forward of a kind the GPU decoder does not run");
  return std::make_unique<DeviceMlp>(w, where);
}

class DeviceMixture final : public DeviceFeedForward {
 public:
  DeviceMixture(const MixtureOfExperts& m, const std::string& where) {
    const MixtureOfExperts::Parts p = m.parts();
    route_ = p.route;
    router_ = {p.router, Tensor()};
    E_ = p.router.dim(0);
    for (size_t e = 0; e < p.experts->size(); ++e)
      experts_.push_back(device_mlp(*(*p.experts)[e], where + " expert " + std::to_string(e)));
    if (p.latent_in.defined()) {
      latent_in_ = {p.latent_in, Tensor()};
      latent_out_ = {p.latent_out, Tensor()};
    }
    if (p.shared) shared_ = device_mlp(*p.shared, where + " shared expert");
    // x reaches the router, the shared expert and (without latents) the experts as it is.
    const auto same_dtype = [&](DType d, const std::string& what) {
      if (d != input_dtype()) throw Error("device cuda: " + where + ": the router and the " + what + " differ in dtype");
    };
    if (latent_in_.w.defined()) same_dtype(latent_in_.input_dtype(), "latent projection");
    else
      for (const auto& e : experts_) same_dtype(e->input_dtype(), "experts");
    if (shared_) same_dtype(shared_->input_dtype(), "shared expert");
  }
  DType input_dtype() const override { return router_.input_dtype(); }
  bool graph_safe() const override { return false; }

  void forward(const Tensor& x, const Tensor& y) const override {
    const int64_t T = x.dim(0);
    const Tensor logits = cuda::empty(DType::f32, {T, E_});
    router_.apply(x, logits);
    const Routes routes = route_(cuda::to_host(logits));

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

    Tensor in = x, routed = y;
    if (latent_in_.w.defined()) {
      in = cuda::empty(DType::f32, {T, latent_in_.w.dim(0)});
      latent_in_.apply(x, in);
      routed = cuda::empty(DType::f32, in.shape());
    }
    const int64_t W = in.dim(1);
    cuda::zero(routed);
    int64_t first = 0;
    for (size_t e = 0; e < routes.size(); ++e) {
      const int64_t m = static_cast<int64_t>(routes[e].size());
      if (m == 0) continue;
      const Tensor idx = dev_tokens.slice(0, first, first + m), w = dev_weights.slice(0, first, first + m);
      const Tensor xe = cuda::empty(in.dtype(), {m, W}), ye = cuda::empty(DType::f32, {m, W});
      cuda::gather_rows(in, idx, xe);
      experts_[e]->forward(xe, ye);
      cuda::scatter_add_rows(ye, idx, w, routed);
      first += m;
    }
    if (latent_out_.w.defined()) latent_out_.apply(routed, y);
    if (shared_) {
      const Tensor s = cuda::empty(DType::f32, y.shape());
      shared_->forward(x, s);
      cuda::add_into(y, s);
    }
  }

 private:
  std::function<Routes(const Tensor&)> route_;
  DeviceLinear router_, latent_in_, latent_out_;
  std::vector<std::unique_ptr<DeviceMlp>> experts_;
  std::unique_ptr<DeviceMlp> shared_;
  int64_t E_ = 0;
};

}  // namespace

std::unique_ptr<DeviceFeedForward> make_device_feed_forward(const FeedForward& f, const std::string& where) {
  if (const auto* m = dynamic_cast<const MixtureOfExperts*>(&f)) return std::make_unique<DeviceMixture>(*m, where);
  return device_mlp(f, where);
}

}  // namespace subq
