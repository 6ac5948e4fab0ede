// The channel-mixing half of a block: x -> MLP(x) per token. Four kinds cover the
// architectures subq loads: gated (SwiGLU: down(act(gate x) * up x), Llama, Bamba,
// Jamba), plain (down(act(up x)), Nemotron-H with relu^2), a softmax top-k mixture of
// gated experts (Jamba), and a sigmoid, group-limited mixture of plain experts with a
// shared expert (Nemotron-H).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "subq/ops.h"
#include "subq/tensor.h"

namespace subq {

// Parses a Hugging Face activation name ("silu", "swish", "gelu_pytorch_tanh", "relu2").
Activation parse_activation(const std::string& name);

struct GatedWeights {
  Tensor gate, up, down;                 // [F, D], [F, D], [D, F]; f32/bf16/f16
  Tensor gate_bias{}, up_bias{}, down_bias{};  // [F], [F], [D] f32, or undefined (mlp_bias)
};

class FeedForward {
 public:
  virtual ~FeedForward() = default;
  // y[T, D] = MLP(x[T, D]); x and y f32, contiguous, must not alias.
  virtual void forward(const Tensor& x, const Tensor& y) const = 0;
  virtual int64_t width() const = 0;  // D
  // The weights of a gated or plain MLP, for a backend that runs the MLP itself (the CUDA
  // decoder); a mixture of experts exposes none here (kind none) but its parts through
  // MixtureOfExperts.
  struct Weights {
    enum class Kind { none, gated, plain } kind = Kind::none;
    GatedWeights w;  // plain: up and down only
    Activation act = Activation::silu;
  };
  virtual Weights weights() const { return {}; }
};

// routes[e]: the (token, weight) pairs a mixture of experts sends to expert e, tokens
// ascending.
using Routes = std::vector<std::vector<std::pair<int64_t, float>>>;

// How a mixture picks each token's experts from its router's outputs: a softmax over
// the experts and the top_k best (Jamba), or GroupLimitedRouter's rule (Nemotron-H).
// Ties go to the lower expert index.
struct RouteRule {
  enum class Kind { softmax_top_k, group_limited } kind = Kind::softmax_top_k;
  int64_t experts = 0, top_k = 1;
  bool normalize = false;  // the top_k weights divided by their sum
  // group_limited only (GroupLimitedRouter's fields):
  int64_t n_group = 1, topk_group = 1;
  float scale = 1.f;       // routed_scaling_factor
  Tensor correction_bias;  // f32 [experts]
};
// Throws unless the rule's counts fit together (top_k, and the groups of group_limited).
void check_route_rule(const RouteRule& rule);
// The routes of T tokens from the router's outputs x · router^T (f32 [T, E]).
Routes route_tokens(const RouteRule& rule, const Tensor& router_out);

// A mixture of experts opened up for a backend that runs the matmuls itself (the CUDA
// decoder): y[t] = latent_out(sum over t's routes of weight * expert(latent_in(x))[t])
// + shared(x)[t], each projection or the shared expert left out where undefined.
class MixtureOfExperts : public FeedForward {
 public:
  struct Parts {
    Tensor router;                                             // [E, D]
    const std::vector<std::unique_ptr<FeedForward>>* experts;  // E, each of width L (D without latents)
    Tensor latent_in, latent_out;                              // [L, D], [D, L], or undefined
    const FeedForward* shared = nullptr;                       // width D, or none
    RouteRule rule;
  };
  virtual Parts parts() const = 0;
};

std::unique_ptr<FeedForward> make_gated_mlp(GatedWeights w, Activation act);
// down(act(up x)); up [F, D], down [D, F].
std::unique_ptr<FeedForward> make_plain_mlp(Tensor up, Tensor down, Activation act);
// Router [E, D]; softmax over experts, the top_k weights used unnormalised unless
// normalize_top_k (as each architecture does).
std::unique_ptr<FeedForward> make_moe(Tensor router, std::vector<GatedWeights> experts, int64_t top_k,
                                      bool normalize_top_k, Activation act);

// Routing of DeepSeek-V3's "noaux_tc" kind, as Nemotron-H uses it. scores =
// sigmoid(x · weight^T) in f32; experts are *chosen* by score + correction_bias: the E
// experts form n_group equal groups, each group ranked by the sum of its two best choice
// values, the topk_group best groups kept, and the num_experts_per_tok best experts among
// them taken. Their weights are their *scores*, divided by (their sum + 1e-20) when
// norm_topk_prob, times routed_scaling_factor. Fields are named as in the HF config.
struct GroupLimitedRouter {
  Tensor weight;                // [E, D], f32/bf16/f16
  Tensor correction_bias;       // f32 [E] (e_score_correction_bias)
  int64_t num_experts_per_tok = 1, n_group = 1, topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.f;
};
// y = latent_out(sum of the routed experts' weighted outputs on latent_in(x)) + shared(x).
// latent_in [L, D] and latent_out [D, L] are both undefined when the experts work at
// width D; every expert has width L, the shared expert width D.
std::unique_ptr<FeedForward> make_group_limited_moe(GroupLimitedRouter router,
                                                    std::vector<std::unique_ptr<FeedForward>> experts,
                                                    Tensor latent_in, Tensor latent_out,
                                                    std::unique_ptr<FeedForward> shared);

}  // namespace subq
