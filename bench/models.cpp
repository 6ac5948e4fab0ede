// Whole-model bench cases (family "model"): prefill and decode tokens/s of checkpoints
// shaped like Mamba-130m, Mamba2-130m and Llama-160M, with random bf16 weights (speed
// does not depend on the values). Each checkpoint is written once per process as a
// Hugging Face directory under the temp dir and loaded through Model::load, the same
// path `subq run` takes. Decode reports bytes = the weight bytes a step reads, so its
// roofline fraction is the share of the memory-bandwidth bound on decode speed.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "bench/inputs.h"
#include "src/io/writers.h"
#include "subq/model.h"
#include "subq/ops.h"

namespace subq::bench {
namespace {

struct Spec {
  std::string name, config;
  std::vector<std::pair<std::string, Shape>> tensors;
};

Spec mamba_130m() {
  Spec s{"mamba-130m", R"({"architectures": ["MambaForCausalLM"], "hidden_size": 768, "intermediate_size": 1536,
    "state_size": 16, "num_hidden_layers": 24, "vocab_size": 50280, "conv_kernel": 4, "time_step_rank": 48,
    "use_bias": false, "use_conv_bias": true, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": true})", {}};
  s.tensors = {{"backbone.embeddings.weight", {50280, 768}}, {"backbone.norm_f.weight", {768}}};
  for (int l = 0; l < 24; ++l) {
    const std::string p = "backbone.layers." + std::to_string(l) + ".";
    for (auto& [n, sh] : std::vector<std::pair<std::string, Shape>>{
             {"norm.weight", {768}}, {"mixer.in_proj.weight", {3072, 768}}, {"mixer.conv1d.weight", {1536, 1, 4}},
             {"mixer.conv1d.bias", {1536}}, {"mixer.x_proj.weight", {80, 1536}}, {"mixer.dt_proj.weight", {1536, 48}},
             {"mixer.dt_proj.bias", {1536}}, {"mixer.A_log", {1536, 16}}, {"mixer.D", {1536}},
             {"mixer.out_proj.weight", {768, 1536}}})
      s.tensors.emplace_back(p + n, sh);
  }
  return s;
}

Spec mamba2_130m() {
  Spec s{"mamba2-130m", R"({"architectures": ["Mamba2ForCausalLM"], "hidden_size": 768, "num_heads": 24,
    "head_dim": 64, "state_size": 128, "n_groups": 1, "expand": 2, "num_hidden_layers": 24, "vocab_size": 50288,
    "conv_kernel": 4, "use_bias": false, "use_conv_bias": true, "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": true})", {}};
  s.tensors = {{"backbone.embeddings.weight", {50288, 768}}, {"backbone.norm_f.weight", {768}}};
  const int64_t conv_dim = 1536 + 2 * 128, proj = 2 * 1536 + 2 * 128 + 24;
  for (int l = 0; l < 24; ++l) {
    const std::string p = "backbone.layers." + std::to_string(l) + ".";
    for (auto& [n, sh] : std::vector<std::pair<std::string, Shape>>{
             {"norm.weight", {768}}, {"mixer.in_proj.weight", {proj, 768}}, {"mixer.conv1d.weight", {conv_dim, 1, 4}},
             {"mixer.conv1d.bias", {conv_dim}}, {"mixer.dt_bias", {24}}, {"mixer.A_log", {24}}, {"mixer.D", {24}},
             {"mixer.norm.weight", {1536}}, {"mixer.out_proj.weight", {768, 1536}}})
      s.tensors.emplace_back(p + n, sh);
  }
  return s;
}

Spec llama_160m() {
  Spec s{"llama-160m", R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 768, "intermediate_size": 3072,
    "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12, "vocab_size": 32000,
    "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false})", {}};
  s.tensors = {{"model.embed_tokens.weight", {32000, 768}}, {"model.norm.weight", {768}}, {"lm_head.weight", {32000, 768}}};
  for (int l = 0; l < 12; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (auto& [n, sh] : std::vector<std::pair<std::string, Shape>>{
             {"input_layernorm.weight", {768}}, {"post_attention_layernorm.weight", {768}},
             {"self_attn.q_proj.weight", {768, 768}}, {"self_attn.k_proj.weight", {768, 768}},
             {"self_attn.v_proj.weight", {768, 768}}, {"self_attn.o_proj.weight", {768, 768}},
             {"mlp.gate_proj.weight", {3072, 768}}, {"mlp.up_proj.weight", {3072, 768}},
             {"mlp.down_proj.weight", {768, 3072}}})
      s.tensors.emplace_back(p + n, sh);
  }
  return s;
}

// Small uniform weights; norm weights near 1 so activations stay O(1).
void fill(const std::string& name, const Tensor& t32, uint64_t seed) {
  const bool norm = name.find("norm") != std::string::npos;
  fill_uniform(t32.mutable_data<float>(), t32.numel(), norm ? 0.9f : -0.05f, norm ? 1.1f : 0.05f, seed);
}

// Model directories written by this process, removed at exit.
struct TempDirs {
  std::map<std::string, std::string> by_name;
  ~TempDirs() {
    for (const auto& [name, dir] : by_name) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }
};

// The model directory for `spec`, written on first use (bf16 weights).
const std::string& checkpoint(const Spec& spec) {
  static TempDirs temp;
  auto& dirs = temp.by_name;
  auto it = dirs.find(spec.name);
  if (it != dirs.end()) return it->second;
  const auto dir = std::filesystem::temp_directory_path() / ("subq-bench-" + spec.name + "-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << spec.config;
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint64_t seed = 1;
  for (const auto& [name, shape] : spec.tensors) {
    Tensor t32 = Tensor::empty(DType::f32, shape);
    fill(name, t32, seed++);
    Tensor t = Tensor::empty(DType::bf16, shape);
    convert(t32, t);
    tensors.emplace_back(name, t);
  }
  io::write_safetensors((dir / "model.safetensors").string(), tensors, {});
  return dirs.emplace(spec.name, dir.string()).first->second;
}

// Bytes of bf16 weights one decode step reads: every tensor but an untied input embedding
// (a separate lm_head.weight exists), of which a step gathers one row.
double decode_weight_bytes(const Spec& spec) {
  const bool untied = std::any_of(spec.tensors.begin(), spec.tensors.end(),
                                  [](const auto& t) { return t.first == "lm_head.weight"; });
  double bytes = 0;
  for (const auto& [name, shape] : spec.tensors) {
    if (untied && name.ends_with("embed_tokens.weight")) continue;
    bytes += 2.0 * static_cast<double>(shape.numel());
  }
  return bytes;
}

class Prefill final : public Instance {
 public:
  Prefill(const Spec& spec, int64_t T) : model_(Model::load(checkpoint(spec))), T_(T) {
    ids_.resize(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) ids_[static_cast<size_t>(t)] = static_cast<int32_t>((t * 7919) % model_->info().vocab_size);
    logits_ = Tensor::empty(DType::f32, {1, model_->info().vocab_size});
  }
  void run() override {
    auto state = model_->new_state();
    model_->forward(ids_, *state, logits_);
  }
  int64_t tokens() const override { return T_; }
  // Two flops per weight per token, the embedding gather excluded.
  double flops() const override {
    const auto& i = model_->info();
    return 2.0 * static_cast<double>(i.parameter_count - i.vocab_size * i.d_model) * static_cast<double>(T_);
  }

 private:
  std::unique_ptr<Model> model_;
  int64_t T_;
  std::vector<int32_t> ids_;
  Tensor logits_;
};

// Decodes kSteps tokens one at a time, continuing a state that first read a T-token
// prompt (each run adds kSteps tokens of context, small against T).
class Decode final : public Instance {
 public:
  static constexpr int64_t kSteps = 16;
  Decode(const Spec& spec, int64_t T, const LoadOptions& options = {})
      : model_(Model::load(checkpoint(spec), options)), bytes_per_step_(decode_weight_bytes(spec)) {
    std::vector<int32_t> prompt(static_cast<size_t>(T), 1);
    state_ = model_->new_state();
    logits_ = Tensor::empty(DType::f32, {1, model_->info().vocab_size});
    model_->forward(prompt, *state_, logits_);
  }
  void run() override {
    int32_t next = 2;
    for (int64_t s = 0; s < kSteps; ++s) {
      model_->forward(std::span<const int32_t>(&next, 1), *state_, logits_);
      next = static_cast<int32_t>((next * 31 + 7) % model_->info().vocab_size);
    }
  }
  int64_t tokens() const override { return kSteps; }
  double bytes() const override { return bytes_per_step_ * static_cast<double>(kSteps); }
  bool reads_only() const override { return true; }

 private:
  std::unique_ptr<Model> model_;
  double bytes_per_step_;
  std::unique_ptr<ModelState> state_;
  Tensor logits_;
};

SUBQ_BENCH_CASES(models) {
  std::vector<Case> cases;
  for (auto make : {mamba_130m, mamba2_130m, llama_160m}) {
    const Spec spec = make();
    cases.push_back({.name = "model." + spec.name + ".prefill", .family = "model", .shape = spec.name + " bf16",
                     .seq = {512}, .in_default = true,
                     .make = [spec](int64_t T) { return std::make_unique<Prefill>(spec, T); }});
    cases.push_back({.name = "model." + spec.name + ".decode", .family = "model", .shape = spec.name + " bf16, 16 tokens",
                     .seq = {512}, .in_default = true,
                     .make = [spec](int64_t T) { return std::make_unique<Decode>(spec, T); }});
  }
  // The bf16 checkpoint's default bf16 KV cache against an f32 one: what the cache dtype
  // is worth at this context.
  const Spec llama = llama_160m();
  cases.push_back({.name = "model." + llama.name + ".decode.f32kv", .family = "model",
                   .shape = llama.name + " bf16, f32 KV cache, 16 tokens", .seq = {512}, .in_default = false,
                   .make = [llama](int64_t T) { return std::make_unique<Decode>(llama, T, LoadOptions{.kv_cache = "f32"}); }});
  return cases;
}

}  // namespace
}  // namespace subq::bench
