// The channel-mixing half of a block: x -> MLP(x) per token. Three kinds cover the
// architectures subq loads: gated (SwiGLU: down(act(gate x) * up x), Llama, Bamba,
// Jamba), plain (down(act(up x)), Nemotron-H with relu^2), and a top-k mixture of gated
// experts (Jamba).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "subq/tensor.h"

namespace subq {

enum class Activation { silu, gelu_tanh, relu2 };
// Parses a Hugging Face activation name ("silu", "swish", "gelu_pytorch_tanh", "relu2").
Activation parse_activation(const std::string& name);

class FeedForward {
 public:
  virtual ~FeedForward() = default;
  // y[T, D] = MLP(x[T, D]); x and y f32, contiguous, must not alias.
  virtual void forward(const Tensor& x, const Tensor& y) const = 0;
  virtual int64_t parameter_count() const = 0;
};

struct GatedWeights {
  Tensor gate, up, down;                 // [F, D], [F, D], [D, F]; f32/bf16/f16
  Tensor gate_bias, up_bias, down_bias;  // [F], [F], [D] f32, or undefined (mlp_bias)
};

std::unique_ptr<FeedForward> make_gated_mlp(GatedWeights w, Activation act);
// down(act(up x)); up [F, D], down [D, F].
std::unique_ptr<FeedForward> make_plain_mlp(Tensor up, Tensor down, Activation act);
// Router [E, D]; softmax over experts, the top_k weights used unnormalised unless
// normalize_top_k (as each architecture does).
std::unique_ptr<FeedForward> make_moe(Tensor router, std::vector<GatedWeights> experts, int64_t top_k,
                                      bool normalize_top_k, Activation act);

}  // namespace subq
