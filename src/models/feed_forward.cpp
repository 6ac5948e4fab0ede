#include "src/models/feed_forward.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

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

void activate(Activation act, float* v, int64_t n) {
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

int64_t numel_sum(std::initializer_list<const Tensor*> ts) {
  int64_t n = 0;
  for (const Tensor* t : ts) n += t->defined() ? t->numel() : 0;
  return n;
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
    linear(x, w_.gate, w_.gate_bias, g);
    linear(x, w_.up, w_.up_bias, u);
    float* gp = g.mutable_data<float>();
    const float* up = u.data<float>();
    activate(act_, gp, T * F_);
    for (int64_t i = 0; i < T * F_; ++i) gp[i] *= up[i];
    linear(g, w_.down, w_.down_bias, y);
  }
  int64_t parameter_count() const override {
    return numel_sum({&w_.gate, &w_.up, &w_.down, &w_.gate_bias, &w_.up_bias, &w_.down_bias});
  }
  int64_t width() const { return D_; }

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
  int64_t parameter_count() const override { return numel_sum({&up_, &down_}); }

 private:
  Tensor up_, down_;
  Activation act_;
  int64_t F_ = 0, D_ = 0;
};

class Moe final : public FeedForward {
 public:
  Moe(Tensor router, std::vector<GatedWeights> experts, int64_t top_k, bool normalize, Activation act)
      : router_(std::move(router)), top_k_(top_k), normalize_(normalize) {
    if (!router_.defined() || router_.ndim() != 2) throw Error("MoE: router weight must be [E, D]");
    const int64_t E = router_.dim(0);
    D_ = router_.dim(1);
    if (static_cast<int64_t>(experts.size()) != E)
      throw Error("MoE: router has " + std::to_string(E) + " experts but " + std::to_string(experts.size()) +
                  " expert weight sets were given");
    if (top_k_ < 1 || top_k_ > E) throw Error("MoE: top-k must be in [1, " + std::to_string(E) + "], found " + std::to_string(top_k_));
    for (auto& e : experts) experts_.push_back(std::make_unique<GatedMlp>(std::move(e), act));
    for (const auto& e : experts_)
      if (e->width() != D_) throw Error("MoE: an expert's width differs from the router's");
  }
  void forward(const Tensor& x, const Tensor& y) const override {
    check_io(x, y, D_);
    const int64_t T = x.dim(0), E = router_.dim(0);
    Tensor logits = Tensor::empty(DType::f32, {T, E});
    linear(x, router_, Tensor(), logits);
    softmax(logits, logits);
    // Tokens routed to each expert, with their weights; each expert runs once on its rows.
    std::vector<std::vector<std::pair<int64_t, float>>> routed(static_cast<size_t>(E));
    std::vector<int64_t> order(static_cast<size_t>(E));
    for (int64_t t = 0; t < T; ++t) {
      const float* p = logits.data<float>() + t * E;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + top_k_, order.end(),
                        [p](int64_t a, int64_t b) { return p[a] != p[b] ? p[a] > p[b] : a < b; });
      float norm = 1.f;
      if (normalize_) {
        norm = 0.f;
        for (int64_t k = 0; k < top_k_; ++k) norm += p[order[static_cast<size_t>(k)]];
      }
      for (int64_t k = 0; k < top_k_; ++k) {
        const int64_t e = order[static_cast<size_t>(k)];
        routed[static_cast<size_t>(e)].push_back({t, p[e] / norm});
      }
    }
    float* out = y.mutable_data<float>();
    std::fill_n(out, T * D_, 0.f);
    for (int64_t e = 0; e < E; ++e) {
      const auto& rows = routed[static_cast<size_t>(e)];
      if (rows.empty()) continue;
      const int64_t n = static_cast<int64_t>(rows.size());
      Tensor xe = Tensor::empty(DType::f32, {n, D_}), ye = Tensor::empty(DType::f32, {n, D_});
      for (int64_t i = 0; i < n; ++i)
        std::copy_n(x.data<float>() + rows[static_cast<size_t>(i)].first * D_, D_, xe.mutable_data<float>() + i * D_);
      experts_[static_cast<size_t>(e)]->forward(xe, ye);
      for (int64_t i = 0; i < n; ++i) {
        const auto [t, w] = rows[static_cast<size_t>(i)];
        const float* src = ye.data<float>() + i * D_;
        for (int64_t d = 0; d < D_; ++d) out[t * D_ + d] += w * src[d];
      }
    }
  }
  int64_t parameter_count() const override {
    int64_t n = router_.numel();
    for (const auto& e : experts_) n += e->parameter_count();
    return n;
  }

 private:
  Tensor router_;
  std::vector<std::unique_ptr<GatedMlp>> experts_;
  int64_t top_k_;
  bool normalize_;
  int64_t D_ = 0;
};

}  // namespace

std::unique_ptr<FeedForward> make_gated_mlp(GatedWeights w, Activation act) {
  return std::make_unique<GatedMlp>(std::move(w), act);
}
std::unique_ptr<FeedForward> make_plain_mlp(Tensor up, Tensor down, Activation act) {
  return std::make_unique<PlainMlp>(std::move(up), std::move(down), act);
}
std::unique_ptr<FeedForward> make_moe(Tensor router, std::vector<GatedWeights> experts, int64_t top_k,
                                      bool normalize_top_k, Activation act) {
  return std::make_unique<Moe>(std::move(router), std::move(experts), top_k, normalize_top_k, act);
}

}  // namespace subq
