// The one model shape every supported architecture maps onto: embedding, blocks of
// x + Mixer(Norm(x)) and/or x + MLP(Norm(x)), final norm, head. Architecture files
// (src/models/<arch>.cpp) read config.json and fill a DecoderSpec; nothing else differs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "src/models/feed_forward.h"
#include "subq/io.h"
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

// Checks the spec's shapes and fills the model's info.
ModelInfo describe(const DecoderSpec& spec, int64_t parameter_count, std::string weight_dtypes);
std::unique_ptr<Model> make_decoder(DecoderSpec spec, int64_t parameter_count, std::string weight_dtypes);
// The same model on the GPU (src/models/decoder_cuda.cu; CUDA builds only). The spec's
// weights are copied to GPU memory; layers it cannot run there are an Error naming them.
std::unique_ptr<Model> make_cuda_decoder(DecoderSpec spec, int64_t parameter_count, std::string weight_dtypes);

// The state file of both decoders (safetensors): tensor "layer.L.I" is part I of layer L's
// MixerState::snapshot(), metadata the format, the model's fingerprint and the position.
// A state saved on one device loads on the other.
std::string state_fingerprint(const ModelInfo& info);
void write_state_file(const std::string& path, const std::string& fingerprint, int64_t position,
                      const std::vector<std::vector<Tensor>>& layers);
struct StateFile {
  SafetensorsFile file;  // the layers' tensors view its mapping
  int64_t position = 0;
  std::vector<std::vector<Tensor>> layers;  // per layer; empty for a layer without state
};
// Checks format and fingerprint; Error naming the file on any mismatch or on tensors of
// no layer with state (stateful[l]: layer l has a mixer).
StateFile read_state_file(const std::string& path, const std::string& fingerprint, const std::vector<bool>& stateful);

}  // namespace subq
