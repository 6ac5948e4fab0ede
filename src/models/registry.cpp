// Model::load: config.json's "architectures"[0] picks the architecture file.
#include <filesystem>
#include <map>

#include "src/models/architectures.h"

namespace subq {
namespace {

using Builder = DecoderSpec (*)(const Config&, const Checkpoint&, const LoadOptions&);

const std::map<std::string, Builder>& builders() {
  static const std::map<std::string, Builder> b = {
      {"BambaForCausalLM", models::build_bamba},
      {"JambaForCausalLM", models::build_jamba},
      {"LlamaForCausalLM", models::build_llama},
      {"MambaForCausalLM", models::build_mamba},
      {"Mamba2ForCausalLM", models::build_mamba2},
      {"NemotronHForCausalLM", models::build_nemotron_h},
  };
  return b;
}

// "bf16 x 98, f32 x 2" and the total element count, over every tensor in the checkpoint.
std::pair<int64_t, std::string> census(const Checkpoint& w) {
  std::map<std::string, int64_t> count;
  int64_t params = 0;
  for (const auto& name : w.names()) {
    const Tensor t = w.get(name);
    params += t.numel();
    ++count[dtype_name(t.dtype())];
  }
  std::string s;
  for (const auto& [dt, n] : count) s += (s.empty() ? "" : ", ") + dt + " x " + std::to_string(n);
  return {params, s};
}

// eos_token_id is an integer, a list of integers, or absent/null.
std::vector<int32_t> eos_ids(const Config& c) {
  if (!c.has("eos_token_id")) return {};
  std::vector<int64_t> ids;
  try {
    ids = {c.get<int64_t>("eos_token_id")};
  } catch (const Error&) {
    ids = c.get<std::vector<int64_t>>("eos_token_id");
  }
  std::vector<int32_t> out;
  for (int64_t id : ids) {
    if (id < 0 || id > INT32_MAX) throw Error(c.path() + ": field 'eos_token_id' is out of range");
    out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& options) {
  if (!std::filesystem::is_directory(dir)) throw Error(dir + ": not a model directory");
  if (!options.kv_cache.empty() && options.kv_cache != "auto" && options.kv_cache != "f32" && options.kv_cache != "bf16")
    throw Error("load options: kv_cache must be auto, f32 or bf16, found \"" + options.kv_cache + "\"");
  const bool on_gpu = options.device == "cuda";
  if (!options.device.empty() && options.device != "cpu" && !on_gpu)
    throw Error("load options: device must be cpu or cuda, found \"" + options.device + "\"");
#ifndef SUBQ_WITH_CUDA
  if (on_gpu) throw Error("device cuda: this build has no CUDA backend (nvcc was not found when it was configured)");
#endif
  const Config config = Config::load((std::filesystem::path(dir) / "config.json").string());
  const auto archs = config.get<std::vector<std::string>>("architectures");
  if (archs.empty()) throw Error(config.path() + ": field 'architectures' is empty");
  const auto it = builders().find(archs[0]);
  if (it == builders().end()) {
    std::string known;
    for (const auto& [name, b] : builders()) known += (known.empty() ? "" : ", ") + name;
    throw Error(config.path() + ": architecture " + archs[0] + " is not supported (supported: " + known + ")");
  }
  const Checkpoint weights = Checkpoint::open(dir);
  DecoderSpec spec = it->second(config, weights, options);
  weights.populate(options.progress);  // after the checks: a bad config fails before the read
  spec.eos_token_ids = eos_ids(config);
  const auto [params, dtypes] = census(weights);
#ifdef SUBQ_WITH_CUDA
  if (on_gpu) return make_cuda_decoder(std::move(spec), params, dtypes);
#endif
  return make_decoder(std::move(spec), params, dtypes);
}

}  // namespace subq
