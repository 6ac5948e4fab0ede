// subq public API: a loaded language model (embedding, a schedule of blocks mixing any
// token-mixer kinds, final norm, head) and its per-sequence state.
//
//   auto model = subq::Model::load("path/to/hf-model-dir");
//   auto state = model->new_state();
//   model->forward(prompt_ids, *state, logits);     // prefill: logits [T, V]
//   model->forward({next_id}, *state, logits1);      // decode: logits [1, V]
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "subq/mixer.h"
#include "subq/tensor.h"

namespace subq {

struct ModelInfo {
  std::string architecture;         // e.g. "MambaForCausalLM"
  std::vector<std::string> layers;  // per layer, e.g. "mamba", "attention+mlp", "mamba+moe"
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t parameter_count = 0;
  std::string weight_dtypes;        // e.g. "bf16 x 98, f32 x 2"
  std::vector<int32_t> eos_token_ids;  // config.json's eos_token_id (one or a list)
};

// The recurrent state of every layer for one sequence, and how many tokens it has seen.
class ModelState {
 public:
  virtual ~ModelState() = default;
  virtual int64_t position() const = 0;
  virtual size_t state_bytes() const = 0;
  // Room for `tokens` tokens of context in all (MixerState::reserve); a hint.
  virtual void reserve(int64_t /*tokens*/) {}
};

struct LoadOptions {
  // Sparse prefill policy for every attention layer, e.g. "flexprefill:gamma=0.95",
  // "window:window=1024,sinks=4" (see `subq bench --list`); empty: dense.
  std::string sparse;
  // KV cache element type of every attention layer: "f32", "bf16", or "auto"/empty: bf16
  // for layers whose q/k/v/o weights are bf16 (as transformers keeps K/V in the model
  // dtype; half the bytes decode reads), f32 otherwise.
  std::string kv_cache;
  // Where the model runs: "cpu" (or empty), or "cuda" (the GPU; a build with the CUDA
  // backend, and for now Llama-style attention over a bf16 KV cache (any sparse policy
  // but the evicting window), SwiGLU and relu2 MLPs, Mamba and Mamba-2 layers).
  std::string device;
  // Called as the checkpoint is read into memory (bytes so far, bytes in all): loading
  // reads every weight, so the first forward pass runs at its steady speed, as later ones.
  std::function<void(int64_t done, int64_t total)> progress;
};

class Model {
 public:
  virtual ~Model() = default;
  // Loads a Hugging Face model directory (config.json + safetensors). Throws Error naming
  // the file and field on anything missing, malformed or unsupported.
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& options = {});

  virtual const ModelInfo& info() const = 0;
  virtual std::unique_ptr<ModelState> new_state() const = 0;
  // Consumes tokens continuing `state`. logits is f32 [T, V] (every position) or [1, V]
  // (the last position only, which skips the head for the others).
  virtual void forward(std::span<const int32_t> tokens, ModelState& state, const Tensor& logits) const = 0;
  // Saves a state to a file (safetensors) / reads one back. Continuing from a loaded
  // state gives the same outputs as continuing the saved one. load_state refuses a file
  // written for a different model (architecture, layers or sizes).
  virtual void save_state(const ModelState& state, const std::string& path) const = 0;
  virtual std::unique_ptr<ModelState> load_state(const std::string& path) const = 0;
};

}  // namespace subq
