#include "src/models/feed_forward.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>

#include "src/core/parallel.h"
#include "src/ops/common/activations.h"
#include "subq/ops.h"

namespace subq {

Activation parse_activation(const std::string& name) {
  if (name == "silu" || name == "swish") return Activation::silu;
  if (name == "gelu_pytorch_tanh" || name == "gelu_new") return Activation::gelu_tanh;
  if (name == "relu2") return Activation::relu2;
  throw Error("unsupported activation \"" + name + "\" (supported: silu, swish, gelu_pytorch_tanh, relu2)");
}

namespace {

void activate_range(Activation act, float* v, int64_t n) {
  switch (act) {
    case Activation::silu: ops::silu(v, v, static_cast<size_t>(n)); return;
    case Activation::relu2:
      for (int64_t i = 0; i < n; ++i) v[i] = v[i] > 0 ? v[i] * v[i] : 0.f;
      return;
    case Activation::gelu_tanh:
      for (int64_t i = 0; i < n; ++i) {
        const float x = v[i];
        v[i] = 0.5f * x * (1.f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
      }
      return;
  }
}

// Element-wise passes over a prompt's [T, F] activations run on the pool (serial, they
// left all but one thread idle between the products on either side). A decode step's
// single row is below the grain and stays on the caller.
constexpr int64_t kElementGrain = 1 << 14;

void activate(Activation act, float* v, int64_t n) {
  parallel_for(n, kElementGrain, [&](int64_t b, int64_t e) { activate_range(act, v + b, e - b); });
}

// v = act(v) * u, element-wise.
void activate_times(Activation act, float* v, const float* u, int64_t n) {
  parallel_for(n, kElementGrain, [&](int64_t b, int64_t e) {
    activate_range(act, v + b, e - b);
    for (int64_t i = b; i < e; ++i) v[i] *= u[i];
  });
}

// An optional f32 bias of n elements.
void check_bias(const Tensor& b, int64_t n, const char* what) {
  if (!b.defined()) return;
  check_dtype(b, DType::f32, what);
  check_shape(b, Shape{n}, what);
}

void check_matrix(const Tensor& w, int64_t rows, int64_t cols, const char* what) {
  if (!w.defined() || w.ndim() != 2 || w.dim(0) != rows || w.dim(1) != cols)
    throw Error(std::string(what) + ": expected a [" + std::to_string(rows) + ", " + std::to_string(cols) +
                "] matrix, found " + (w.defined() ? w.str() : std::string("nothing")));
}

void check_io(const Tensor& x, const Tensor& y, int64_t D) {
  check_dtype(x, DType::f32, "feed-forward: x");
  if (x.ndim() != 2 || x.dim(1) != D) throw Error("feed-forward: x must be [T, " + std::to_string(D) + "], found " + x.str());
  check_shape(y, x.shape(), "feed-forward: y");
}

class GatedMlp final : public FeedForward {
 public:
  GatedMlp(GatedWeights w, Activation act) : w_(std::move(w)), act_(act) {
    if (!w_.gate.defined() || w_.gate.ndim() != 2) throw Error("gated MLP: gate weight must be 2-D");
    F_ = w_.gate.dim(0);
    D_ = w_.gate.dim(1);
    check_matrix(w_.up, F_, D_, "gated MLP: up weight");
    check_matrix(w_.down, D_, F_, "gated MLP: down weight");
    check_bias(w_.gate_bias, F_, "gated MLP: gate bias");
    check_bias(w_.up_bias, F_, "gated MLP: up bias");
    check_bias(w_.down_bias, D_, "gated MLP: down bias");
  }
  void forward(const Tensor& x, const Tensor& y) const override {
    check_io(x, y, D_);
    const int64_t T = x.dim(0);
    Tensor g = Tensor::empty(DType::f32, {T, F_}), u = Tensor::empty(DType::f32, {T, F_});
    const LinearOutput gate_up[] = {{w_.gate, w_.gate_bias, g}, {w_.up, w_.up_bias, u}};
    linear_group(x, gate_up);
    activate_times(act_, g.mutable_data<float>(), u.data<float>(), T * F_);
    linear(g, w_.down, w_.down_bias, y);
  }
  int64_t width() const override { return D_; }
  Weights weights() const override { return {Weights::Kind::gated, w_, act_}; }

 private:
  GatedWeights w_;
  Activation act_;
  int64_t F_ = 0, D_ = 0;
};

class PlainMlp final : public FeedForward {
 public:
  PlainMlp(Tensor up, Tensor down, Activation act) : up_(std::move(up)), down_(std::move(down)), act_(act) {
    if (!up_.defined() || up_.ndim() != 2) throw Error("MLP: up weight must be 2-D");
    F_ = up_.dim(0);
    D_ = up_.dim(1);
    check_matrix(down_, D_, F_, "MLP: down weight");
  }
  void forward(const Tensor& x, const Tensor& y) const override {
    check_io(x, y, D_);
    Tensor h = Tensor::empty(DType::f32, {x.dim(0), F_});
    linear(x, up_, Tensor(), h);
    activate(act_, h.mutable_data<float>(), h.numel());
    linear(h, down_, Tensor(), y);
  }
  int64_t width() const override { return D_; }
  Weights weights() const override { return {Weights::Kind::plain, {Tensor(), up_, down_}, act_}; }

 private:
  Tensor up_, down_;
  Activation act_;
  int64_t F_ = 0, D_ = 0;
};

// The k largest of v[0, n), ties to the lower index (torch.topk leaves their order unspecified).
void top_k(const float* v, int64_t n, int64_t k, std::vector<int64_t>& order) {
  order.resize(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [v](int64_t a, int64_t b) { return v[a] != v[b] ? v[a] > v[b] : a < b; });
  order.resize(static_cast<size_t>(k));
}

// What every mixture shares once its router has spoken: each expert runs once, on its
// tokens' rows gathered together, and y[t] = sum over t's routes of weight * output.
// x and y are [T, W], W the experts' width.
void run_experts(const std::vector<std::unique_ptr<FeedForward>>& experts, const Routes& routes, const Tensor& x,
                 const Tensor& y) {
  const int64_t W = x.dim(1);
  float* out = y.mutable_data<float>();
  std::fill_n(out, y.numel(), 0.f);
  for (size_t e = 0; e < experts.size(); ++e) {
    const auto& rows = routes[e];
    if (rows.empty()) continue;
    const int64_t n = static_cast<int64_t>(rows.size());
    Tensor xe = Tensor::empty(DType::f32, {n, W}), ye = Tensor::empty(DType::f32, {n, W});
    for (int64_t i = 0; i < n; ++i)
      std::copy_n(x.data<float>() + rows[static_cast<size_t>(i)].first * W, W, xe.mutable_data<float>() + i * W);
    experts[e]->forward(xe, ye);
    for (int64_t i = 0; i < n; ++i) {
      const auto [t, w] = rows[static_cast<size_t>(i)];
      const float* src = ye.data<float>() + i * W;
      for (int64_t d = 0; d < W; ++d) out[t * W + d] += w * src[d];
    }
  }
}

void check_experts(const std::vector<std::unique_ptr<FeedForward>>& experts, int64_t E, int64_t width) {
  if (static_cast<int64_t>(experts.size()) != E)
    throw Error("MoE: router has " + std::to_string(E) + " experts but " + std::to_string(experts.size()) +
                " experts were given");
  for (size_t e = 0; e < experts.size(); ++e)
    if (!experts[e] || experts[e]->width() != width)
      throw Error("MoE: expert " + std::to_string(e) + " must have width " + std::to_string(width) +
                  (experts[e] ? ", found " + std::to_string(experts[e]->width()) : std::string(", found none")));
}

void check_router(const Tensor& w) {
  if (!w.defined() || w.ndim() != 2)
    throw Error("MoE: router weight must be [E, D], found " + (w.defined() ? w.str() : std::string("nothing")));
}

// The router's outputs for some tokens: f32 [T, E], contiguous.
void check_router_out(const Tensor& out, int64_t E) {
  check_dtype(out, DType::f32, "MoE: router outputs");
  if (out.ndim() != 2 || out.dim(1) != E)
    throw Error("MoE: router outputs must be [T, " + std::to_string(E) + "], found " + out.str());
  check_contiguous(out, "MoE: router outputs");
}

// Softmax over the E experts, the k best taken, their weights normalised to sum 1 when
// `normalize`.
Routes softmax_routes(const Tensor& router_out, int64_t E, int64_t k, bool normalize) {
  const int64_t T = router_out.dim(0);
  Tensor probs = Tensor::empty(DType::f32, {T, E});
  softmax(router_out, probs);
  Routes routes(static_cast<size_t>(E));
  std::vector<int64_t> order;
  for (int64_t t = 0; t < T; ++t) {
    const float* p = probs.data<float>() + t * E;
    top_k(p, E, k, order);
    float norm = 1.f;
    if (normalize) {
      norm = 0.f;
      for (int64_t e : order) norm += p[e];
    }
    for (int64_t e : order) routes[static_cast<size_t>(e)].push_back({t, p[e] / norm});
  }
  return routes;
}

// GroupLimitedRouter's rule (see feed_forward.h).
Routes group_limited_routes(const Tensor& router_out, const RouteRule& r) {
  const int64_t T = router_out.dim(0), E = r.experts, G = E / r.n_group;
  Tensor scores = Tensor::empty(DType::f32, {T, E});
  float* s = scores.mutable_data<float>();
  const float* logit = router_out.data<float>();
  for (int64_t i = 0; i < T * E; ++i) s[i] = 1.f / (1.f + std::exp(-logit[i]));
  const float* bias = r.correction_bias.data<float>();
  Routes routes(static_cast<size_t>(E));
  std::vector<float> choice(static_cast<size_t>(E)), group_score(static_cast<size_t>(r.n_group));
  std::vector<int64_t> order;
  std::vector<char> kept(static_cast<size_t>(r.n_group));
  for (int64_t t = 0; t < T; ++t) {
    const float* st = s + t * E;
    for (int64_t e = 0; e < E; ++e) choice[static_cast<size_t>(e)] = st[e] + bias[e];
    for (int64_t g = 0; g < r.n_group; ++g) {
      const float* c = choice.data() + g * G;
      top_k(c, G, 2, order);
      group_score[static_cast<size_t>(g)] = c[order[0]] + c[order[1]];
    }
    top_k(group_score.data(), r.n_group, r.topk_group, order);
    std::fill(kept.begin(), kept.end(), 0);
    for (int64_t g : order) kept[static_cast<size_t>(g)] = 1;
    for (int64_t e = 0; e < E; ++e)
      if (!kept[static_cast<size_t>(e / G)]) choice[static_cast<size_t>(e)] = -std::numeric_limits<float>::infinity();
    top_k(choice.data(), E, r.top_k, order);
    float norm = 1.f;
    if (r.normalize) {
      norm = 0.f;
      for (int64_t e : order) norm += st[e];
      norm += 1e-20f;
    }
    for (int64_t e : order) routes[static_cast<size_t>(e)].push_back({t, st[e] / norm * r.scale});
  }
  return routes;
}

class SoftmaxMoe final : public MixtureOfExperts {
 public:
  SoftmaxMoe(Tensor router, std::vector<GatedWeights> experts, int64_t top_k, bool normalize, Activation act)
      : router_(std::move(router)) {
    check_router(router_);
    const int64_t E = router_.dim(0);
    D_ = router_.dim(1);
    if (top_k < 1 || top_k > E) throw Error("MoE: top-k must be in [1, " + std::to_string(E) + "], found " + std::to_string(top_k));
    rule_.experts = E;
    rule_.top_k = top_k;
    rule_.normalize = normalize;
    for (auto& e : experts) experts_.push_back(std::make_unique<GatedMlp>(std::move(e), act));
    check_experts(experts_, E, D_);
  }
  void forward(const Tensor& x, const Tensor& y) const override {
    check_io(x, y, D_);
    Tensor logits = Tensor::empty(DType::f32, {x.dim(0), router_.dim(0)});
    linear(x, router_, Tensor(), logits);
    run_experts(experts_, route_tokens(rule_, logits), x, y);
  }
  int64_t width() const override { return D_; }
  Parts parts() const override { return {router_, &experts_, Tensor(), Tensor(), nullptr, rule_}; }

 private:
  Tensor router_;
  std::vector<std::unique_ptr<FeedForward>> experts_;
  RouteRule rule_;
  int64_t D_ = 0;
};

class GroupLimitedMoe final : public MixtureOfExperts {
 public:
  GroupLimitedMoe(GroupLimitedRouter router, std::vector<std::unique_ptr<FeedForward>> experts, Tensor latent_in,
                  Tensor latent_out, std::unique_ptr<FeedForward> shared)
      : r_(std::move(router)),
        experts_(std::move(experts)),
        latent_in_(std::move(latent_in)),
        latent_out_(std::move(latent_out)),
        shared_(std::move(shared)) {
    check_router(r_.weight);
    const int64_t E = r_.weight.dim(0);
    D_ = r_.weight.dim(1);
    const auto n = [](int64_t v) { return std::to_string(v); };
    if (r_.n_group < 1 || E % r_.n_group != 0)
      throw Error("MoE: n_group = " + n(r_.n_group) + " must divide the " + n(E) + " experts");
    const int64_t G = E / r_.n_group;
    // A group is ranked by its two best experts.
    if (G < 2)
      throw Error("MoE: n_group = " + n(r_.n_group) + " leaves fewer than 2 of the " + n(E) + " experts per group");
    if (r_.topk_group < 1 || r_.topk_group > r_.n_group)
      throw Error("MoE: topk_group must be in [1, n_group = " + n(r_.n_group) + "], found " + n(r_.topk_group));
    if (r_.num_experts_per_tok < 1 || r_.num_experts_per_tok > r_.topk_group * G)
      throw Error("MoE: num_experts_per_tok must be in [1, " + n(r_.topk_group * G) +
                  "] (the experts of topk_group = " + n(r_.topk_group) + " groups), found " +
                  n(r_.num_experts_per_tok));
    if (latent_in_.defined() != latent_out_.defined())
      throw Error("MoE: the latent projections come in pairs; only one of them was given");
    L_ = D_;
    if (latent_in_.defined()) {
      if (latent_in_.ndim() != 2) throw Error("MoE: latent input projection must be [L, D], found " + latent_in_.str());
      L_ = latent_in_.dim(0);
      check_matrix(latent_in_, L_, D_, "MoE: latent input projection");
      check_matrix(latent_out_, D_, L_, "MoE: latent output projection");
    }
    check_experts(experts_, E, L_);
    rule_ = {RouteRule::Kind::group_limited, E, r_.num_experts_per_tok, r_.norm_topk_prob, r_.n_group,
             r_.topk_group, r_.routed_scaling_factor, r_.correction_bias};
    check_route_rule(rule_);  // the correction bias
    if (!shared_ || shared_->width() != D_) throw Error("MoE: the shared expert must have width " + n(D_));
  }

  void forward(const Tensor& x, const Tensor& y) const override {
    check_io(x, y, D_);
    const int64_t T = x.dim(0);
    Tensor scores = Tensor::empty(DType::f32, {T, r_.weight.dim(0)});
    linear(x, r_.weight, Tensor(), scores);
    const Routes routes = route_tokens(rule_, scores);
    if (latent_in_.defined()) {
      Tensor h = Tensor::empty(DType::f32, {T, L_}), routed = Tensor::empty(DType::f32, {T, L_});
      linear(x, latent_in_, Tensor(), h);
      run_experts(experts_, routes, h, routed);
      linear(routed, latent_out_, Tensor(), y);
    } else {
      run_experts(experts_, routes, x, y);
    }
    Tensor sh = Tensor::empty(DType::f32, {T, D_});
    shared_->forward(x, sh);
    float* out = y.mutable_data<float>();
    const float* add = sh.data<float>();
    for (int64_t i = 0; i < T * D_; ++i) out[i] += add[i];
  }
  int64_t width() const override { return D_; }
  Parts parts() const override {
    return {r_.weight, &experts_, latent_in_, latent_out_, shared_.get(), rule_};
  }

 private:
  GroupLimitedRouter r_;
  RouteRule rule_;
  std::vector<std::unique_ptr<FeedForward>> experts_;
  Tensor latent_in_, latent_out_;
  std::unique_ptr<FeedForward> shared_;
  int64_t D_ = 0, L_ = 0;
};

}  // namespace

void check_route_rule(const RouteRule& r) {
  const int64_t E = r.experts, k = r.top_k;
  const auto n = [](int64_t v) { return std::to_string(v); };
  if (E < 1 || k < 1 || k > E) throw Error("MoE: top_k must be in [1, " + n(E) + "] experts, found " + n(k));
  if (r.kind != RouteRule::Kind::group_limited) return;
  // A group is ranked by its two best experts; the kept groups must hold top_k experts.
  if (r.n_group < 1 || E % r.n_group != 0 || E / r.n_group < 2 || r.topk_group < 1 || r.topk_group > r.n_group ||
      k > r.topk_group * (E / r.n_group))
    throw Error("MoE: n_group " + n(r.n_group) + " and topk_group " + n(r.topk_group) + " do not fit " + n(E) +
                " experts and top_k " + n(k));
  if (!r.correction_bias.defined()) throw Error("MoE: e_score_correction_bias is missing");
  check_bias(r.correction_bias, E, "MoE: e_score_correction_bias");
  check_contiguous(r.correction_bias, "MoE: e_score_correction_bias");
}

Routes route_tokens(const RouteRule& rule, const Tensor& router_out) {
  check_route_rule(rule);
  check_router_out(router_out, rule.experts);
  return rule.kind == RouteRule::Kind::softmax_top_k
             ? softmax_routes(router_out, rule.experts, rule.top_k, rule.normalize)
             : group_limited_routes(router_out, rule);
}

std::unique_ptr<FeedForward> make_gated_mlp(GatedWeights w, Activation act) {
  return std::make_unique<GatedMlp>(std::move(w), act);
}
std::unique_ptr<FeedForward> make_plain_mlp(Tensor up, Tensor down, Activation act) {
  return std::make_unique<PlainMlp>(std::move(up), std::move(down), act);
}
std::unique_ptr<FeedForward> make_moe(Tensor router, std::vector<GatedWeights> experts, int64_t top_k,
                                      bool normalize_top_k, Activation act) {
  return std::make_unique<SoftmaxMoe>(std::move(router), std::move(experts), top_k, normalize_top_k, act);
}
std::unique_ptr<FeedForward> make_group_limited_moe(GroupLimitedRouter router,
                                                    std::vector<std::unique_ptr<FeedForward>> experts,
                                                    Tensor latent_in, Tensor latent_out,
                                                    std::unique_ptr<FeedForward> shared) {
  return std::make_unique<GroupLimitedMoe>(std::move(router), std::move(experts), std::move(latent_in),
                                           std::move(latent_out), std::move(shared));
}

}  // namespace subq
