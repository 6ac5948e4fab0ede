// Every architecture against transformers: tiny random-init checkpoints written by
// scripts/fixtures/make_model_fixtures.py, with the logits transformers computed at every
// prompt position and its greedy continuation. subq must load the directory unchanged,
// match the logits, and produce the same greedy tokens whether the prompt is fed whole,
// in chunks, or token by token.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <tuple>

#include "src/io/writers.h"
#include "subq/io.h"
#include "subq/model.h"
#include "tests/support/model_fixtures.h"
#include "tests/support/random.h"

namespace subq {
namespace {

const std::string& kFixtures = test::kModelFixtures;
using test::argmax;

// Fixtures whose attention weights are bf16, so Model::load gives them a bf16 KV cache.
bool bf16_cache(const std::string& name) { return name == "llama_tied_bf16"; }

// Logits within rel_tol of the logit scale; greedy tokens equal.
void check_fixture(const std::string& name, const LoadOptions& options, double rel_tol) {
  SCOPED_TRACE(name + (options.kv_cache.empty() ? "" : " kv_cache=" + options.kv_cache));
  auto model = Model::load(kFixtures + name, options);
  const int64_t V = model->info().vocab_size;
  for (const test::FixturePrompt& p : test::fixture_prompts(name)) {
    const int64_t T = static_cast<int64_t>(p.ids.size());
    // Whole prompt at once: logits at every position.
    auto state = model->new_state();
    Tensor logits = test::nan_tensor({T, V});
    model->forward(p.ids, *state, logits);
    std::vector<double> want;
    double scale = 0;
    for (const auto& row : p.logits)
      for (double v : row) want.push_back(v), scale = std::max(scale, std::abs(v));
    test::expect_close(logits, want, rel_tol, rel_tol * scale, name + " logits");

    // Greedy continuation, prompt fed in chunks of 3 then token by token.
    auto s2 = model->new_state();
    Tensor last = test::nan_tensor({1, V});
    for (int64_t t0 = 0; t0 < T; t0 += 3) {
      const int64_t n = std::min<int64_t>(3, T - t0);
      model->forward(std::span<const int32_t>(p.ids.data() + t0, static_cast<size_t>(n)), *s2, last);
    }
    std::vector<int32_t> got;
    for (size_t i = 0; i < p.greedy.size(); ++i) {
      const int32_t next = argmax(last.data<float>(), V);
      got.push_back(next);
      model->forward(std::span<const int32_t>(&next, 1), *s2, last);
    }
    EXPECT_EQ(got, p.greedy) << name;
    EXPECT_EQ(s2->position(), T + static_cast<int64_t>(p.greedy.size()));
  }
}

class Fixture : public testing::TestWithParam<std::string> {};

TEST_P(Fixture, LogitsAndGreedyMatchTransformers) {
  const std::string name = GetParam();
  // f32 through a few layers of random weights: relative 1e-4 of the logit scale.
  constexpr double kExact = 1e-4;
  if (!bf16_cache(name)) return check_fixture(name, {}, kExact);
  // The references are float64 with K/V unrounded, so an f32 cache must meet the bound...
  LoadOptions f32_cache;
  f32_cache.kv_cache = "f32";
  check_fixture(name, f32_cache, kExact);
  // ... and the default bf16 cache differs by the rounding of K/V alone (<= 2^-9 relative
  // per element). Running these checkpoints in transformers at float64 with a cache that
  // rounds K/V to bf16 moves the logits by up to 1.7e-3 of their scale, and one K/V
  // element a bf16 ulp off (what an f32 value next to a rounding midpoint gives) by up to
  // 1.4e-3 more: 5e-3 covers both.
  check_fixture(name, {}, 5e-3);
}

INSTANTIATE_TEST_SUITE_P(Models, Fixture, testing::Values("llama", "llama_tied_bf16", "llama_rope_llama3", "llama_rope_yarn", "llama_rope_linear", "llama_bias", "mamba", "mamba_bias_bf16", "mamba2", "nemotron_h", "bamba", "jamba", "nemotron_h_moe"));

// nemotron_h_moe holds what save_pretrained writes by default, the hub's layout: backbone.*
// names and a tensor per expert. With save_original_format=False transformers writes its
// own instead: model.* names and each layer's experts fused into [E, I, L] / [E, L, I]
// tensors; and the hub's config.json files give the schedule as hybrid_override_pattern.
// Rewritten that way, the fixture must load to the same model.
TEST(ModelLoad, ReadsTheWeightsInAndReportsProgress) {
  std::vector<std::pair<int64_t, int64_t>> calls;
  LoadOptions options;
  options.progress = [&](int64_t done, int64_t total) { calls.emplace_back(done, total); };
  Model::load(kFixtures + "mamba2", options);
  const auto bytes = static_cast<int64_t>(std::filesystem::file_size(kFixtures + "mamba2/model.safetensors"));
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.back(), std::make_pair(bytes, bytes));
  for (size_t i = 1; i < calls.size(); ++i) EXPECT_GT(calls[i].first, calls[i - 1].first);
}

TEST(ModelLoad, NemotronHTransformersLayoutAndPatternLoadAlike) {
  const std::string src = kFixtures + "nemotron_h_moe", dir = testing::TempDir() + "subq_nemotron_h_moe_fused";
  std::filesystem::create_directories(dir);
  const Checkpoint hub = Checkpoint::open(src);
  const std::regex per_expert(R"((.*\.experts\.)(\d+)\.((up|down)_proj)\.weight)");
  std::map<std::string, std::map<int64_t, Tensor>> experts;  // fused name -> expert -> [rows, cols]
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : hub.names()) {
    const std::string renamed = name.rfind("backbone.", 0) == 0 ? "model." + name.substr(9) : name;
    std::smatch m;
    if (std::regex_match(renamed, m, per_expert))
      experts[m[1].str() + m[3].str()][std::stoll(m[2].str())] = hub.get(name);
    else
      tensors.push_back({renamed, hub.get(name)});
  }
  ASSERT_EQ(experts.size(), 4u);  // up and down of two MoE layers
  for (const auto& [name, parts] : experts) {
    const Tensor& first = parts.begin()->second;
    Tensor fused = Tensor::empty(DType::f32, {static_cast<int64_t>(parts.size()), first.dim(0), first.dim(1)});
    for (const auto& [e, t] : parts)
      std::memcpy(static_cast<std::byte*>(fused.mutable_raw_data()) + e * t.nbytes(), t.raw_data(), t.nbytes());
    tensors.push_back({name, fused});
  }
  io::write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});

  nlohmann::json config = nlohmann::json::parse(std::ifstream(src + "/config.json"));
  std::string pattern;
  for (const std::string t : config["layers_block_type"])
    pattern += t == "linear_attention" ? 'M' : t == "full_attention" ? '*' : t == "moe" ? 'E' : '-';
  EXPECT_EQ(pattern, "ME*E");
  config.erase("layers_block_type");
  config["hybrid_override_pattern"] = pattern;
  std::ofstream(dir + "/config.json") << config.dump();

  auto want = Model::load(src), got = Model::load(dir);
  const std::vector<int32_t> ids = test::fixture_prompts("nemotron_h_moe")[0].ids;
  const int64_t T = static_cast<int64_t>(ids.size()), V = want->info().vocab_size;
  Tensor a = test::nan_tensor({T, V}), b = test::nan_tensor({T, V});
  want->forward(ids, *want->new_state(), a);
  got->forward(ids, *got->new_state(), b);
  EXPECT_EQ(0, std::memcmp(a.data<float>(), b.data<float>(), a.nbytes()));

  // Without any one of an MoE layer's tensors, loading fails naming it.
  for (const std::string missing :
       {"model.layers.3.mixer.experts.down_proj", "model.layers.1.mixer.gate.e_score_correction_bias",
        "model.layers.1.mixer.fc2_latent_proj.weight", "model.layers.3.mixer.shared_experts.up_proj.weight"}) {
    std::vector<std::pair<std::string, Tensor>> fewer;
    for (const auto& t : tensors)
      if (t.first != missing) fewer.push_back(t);
    ASSERT_EQ(fewer.size() + 1, tensors.size()) << missing;
    io::write_safetensors(dir + "/model.safetensors", fewer, {{"format", "pt"}});
    try {
      Model::load(dir);
      ADD_FAILURE() << "loaded without " << missing;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
    }
  }
}

// A config field that changes the math and cannot be honoured, or that disagrees with the
// checkpoint, is an Error naming the field or the tensor.
TEST(ModelLoad, NemotronHMoeConfigErrorsNameTheCulprit) {
  const std::string src = kFixtures + "nemotron_h_moe", dir = testing::TempDir() + "subq_nemotron_h_moe_config";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(src + "/model.safetensors", dir + "/model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  const nlohmann::json good = nlohmann::json::parse(std::ifstream(src + "/config.json"));
  const std::vector<std::tuple<std::string, nlohmann::json, std::string>> cases = {
      {"n_group", 5, "n_group = 5 must divide the 12 experts"},
      {"topk_group", 4, "topk_group must be in [1, n_group = 3]"},
      {"num_experts_per_tok", 9, "num_experts_per_tok must be in [1, 8]"},
      {"mlp_hidden_act", "tanh", "field 'mlp_hidden_act'"},
      {"mlp_bias", true, "mlp_bias"},
      {"n_routed_experts", 0, "field 'n_routed_experts' must be positive"},
      {"n_routed_experts", 10, "backbone.layers.1.mixer.gate.weight"},
      {"moe_latent_size", 16, "backbone.layers.1.mixer.fc1_latent_proj.weight"},
      {"moe_intermediate_size", 25, "tensor 'backbone.layers.1.mixer.experts.0."},
  };
  for (const auto& [field, value, want] : cases) {
    nlohmann::json config = good;
    config[field] = value;
    std::ofstream(dir + "/config.json") << config.dump();
    try {
      Model::load(dir);
      ADD_FAILURE() << "loaded with " << field << " = " << value.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  }
}

TEST(ModelLoad, ClearErrorsForBadDirectories) {
  EXPECT_THROW(Model::load(kFixtures + "no_such_model"), Error);
  const std::string dir = testing::TempDir() + "subq_bad_model";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({"architectures": ["GPT2LMHeadModel"]})";
  try {
    Model::load(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GPT2LMHeadModel is not supported"), std::string::npos) << e.what();
  }
  std::ofstream(dir + "/config.json") << R"({"architectures": ["MambaForCausalLM"], "hidden_size": 8})";
  EXPECT_THROW(Model::load(dir), Error);
}

}  // namespace
}  // namespace subq
