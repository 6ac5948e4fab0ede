// The one model shape every supported architecture maps onto: embedding, blocks of
// x + Mixer(Norm(x)) and/or x + MLP(Norm(x)), final norm, head. Architecture files
// (src/models/<arch>.cpp) read config.json and fill a DecoderSpec; nothing else differs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "src/models/feed_forward.h"
#include "subq/model.h"

namespace subq {

struct Norm {
  Tensor weight;  // f32 [D]
  Tensor bias;    // f32 [D] or undefined (RMSNorm, bias-free LayerNorm)
  float eps = 1e-5f;
  bool layer_norm = false;  // false: RMSNorm
  void apply(const Tensor& x, const Tensor& y) const;
};

struct Block {
  std::string kind;  // shown by `subq info`
  Norm mixer_norm;
  std::unique_ptr<Mixer> mixer;  // null for an MLP-only layer
  Norm mlp_norm;
  std::unique_ptr<FeedForward> mlp;  // null for a mixer-only layer
};

struct DecoderSpec {
  std::string architecture;
  Tensor embedding;  // [V, D] f32/bf16/f16
  std::vector<Block> blocks;
  Norm final_norm;
  Tensor head;  // [V, D]; the embedding itself when tied
  float embedding_scale = 1.f;
  std::vector<int32_t> eos_token_ids;
};

std::unique_ptr<Model> make_decoder(DecoderSpec spec, int64_t parameter_count, std::string weight_dtypes);

}  // namespace subq
