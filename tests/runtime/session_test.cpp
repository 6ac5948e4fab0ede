// Session on the fixture models (tests/fixtures/models, with their character-level
// tokenizer.json): generation equals a hand-rolled greedy loop, stop strings cut the
// stream exactly, saved states continue identically, perplexity equals its definition.
#include "subq/session.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "src/io/writers.h"
#include "subq/io.h"
#include "tests/support/random.h"

namespace subq {
namespace {

const std::string kFixtures = std::string(SUBQ_TEST_DATA) + "/../fixtures/models/";

struct Loaded {
  std::unique_ptr<Model> model;
  Tokenizer tokenizer;
};

Loaded load(const std::string& name) {
  return {Model::load(kFixtures + name), Tokenizer::load(kFixtures + name + "/tokenizer.json")};
}

std::string generate(Session& s, const std::string& prompt, GenerateOptions o, GenerateStats* stats = nullptr) {
  std::string out;
  const GenerateStats st = s.generate(prompt, o, [&](std::string_view piece) { out += piece; });
  if (stats) *stats = st;
  return out;
}

class SessionTest : public testing::TestWithParam<std::string> {};

TEST_P(SessionTest, GreedyGenerateEqualsHandRolledLoop) {
  auto [model, tok] = load(GetParam());
  const std::string prompt = "The quick brown fox";
  std::vector<int32_t> ids = tok.encode(prompt);
  const int64_t V = model->info().vocab_size;
  auto state = model->new_state();
  Tensor logits = Tensor::empty(DType::f32, {1, V});
  model->forward(ids, *state, logits);
  std::vector<int32_t> want;
  for (int i = 0; i < 12; ++i) {
    const int32_t next = static_cast<int32_t>(std::max_element(logits.data<float>(), logits.data<float>() + V) -
                                              logits.data<float>());
    want.push_back(next);
    model->forward(std::span<const int32_t>(&next, 1), *state, logits);
  }
  Session s(*model, tok);
  GenerateStats st;
  const std::string got = generate(s, prompt, {.max_new_tokens = 12, .stop_at_eos = false, .prefill_chunk = 5}, &st);
  EXPECT_EQ(got, tok.decode(want, true));
  EXPECT_EQ(st.prompt_tokens, static_cast<int64_t>(ids.size()));
  EXPECT_EQ(st.new_tokens, 12);
  EXPECT_EQ(st.stop_reason, "length");
}

TEST_P(SessionTest, StopStringEndsTheStreamBeforeIt) {
  auto [model, tok] = load(GetParam());
  Session s(*model, tok);
  const std::string full = generate(s, "abc", {.max_new_tokens = 16, .stop_at_eos = false});
  ASSERT_GE(full.size(), 8u);
  const std::string stop = full.substr(5, 3);
  const size_t first = full.find(stop);
  s.reset();
  GenerateStats st;
  const std::string cut = generate(s, "abc", {.max_new_tokens = 16, .stop = {"zzzz", stop}, .stop_at_eos = false}, &st);
  EXPECT_EQ(cut, full.substr(0, first));
  EXPECT_EQ(st.stop_reason, "stop string");
}

TEST_P(SessionTest, SavedStateContinuesIdentically) {
  auto [model, tok] = load(GetParam());
  const std::string path = testing::TempDir() + "subq_state_" + GetParam() + ".safetensors";
  Session a(*model, tok);
  const std::vector<int32_t> ids = tok.encode("Once upon a time");
  a.feed(ids, 4);
  a.save(path);
  const GenerateOptions o{.max_new_tokens = 10, .sampling = {.temperature = 0.8f, .seed = 7}, .stop_at_eos = false};
  const std::string want = generate(a, " there", o);
  Session b(*model, tok);
  b.load(path);
  EXPECT_EQ(b.state().position(), static_cast<int64_t>(ids.size()));
  // The loaded state has no last logits: feeding the same continuation reproduces them.
  EXPECT_EQ(generate(b, " there", o), want);

  // A truncated file and another model's state are refused with clear errors.
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 8);
  EXPECT_THROW(b.load(path), Error);
  std::remove(path.c_str());
}

TEST_P(SessionTest, PerplexityMatchesDefinition) {
  auto [model, tok] = load(GetParam());
  const std::vector<int32_t> ids = tok.encode("It was the best of times, it was the worst of times.");
  const int64_t T = static_cast<int64_t>(ids.size()), V = model->info().vocab_size, ctx = 16;
  double nll = 0;
  int64_t n = 0;
  for (int64_t w0 = 0; w0 < T; w0 += ctx) {
    const int64_t len = std::min(ctx, T - w0);
    auto st = model->new_state();
    Tensor logits = Tensor::empty(DType::f32, {len, V});
    model->forward(std::span<const int32_t>(ids.data() + w0, static_cast<size_t>(len)), *st, logits);
    for (int64_t t = 0; t + 1 < len; ++t) {
      double z = 0;
      for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(logits.data<float>()[t * V + v]));
      nll += std::log(z) - logits.data<float>()[t * V + ids[static_cast<size_t>(w0 + t + 1)]];
      ++n;
    }
  }
  std::vector<float> all;
  const PerplexityResult r = perplexity(*model, ids, ctx, &all);
  EXPECT_EQ(r.scored_tokens, n);
  EXPECT_NEAR(r.mean_nll, nll / n, 1e-6 * std::abs(nll / n));
  EXPECT_EQ(static_cast<int64_t>(all.size()), T * V);
  EXPECT_THROW(perplexity(*model, ids, 1), Error);
}

// llama_tied_bf16 saves and restores a bf16 KV cache, llama an f32 one.
INSTANTIATE_TEST_SUITE_P(Models, SessionTest, testing::Values("mamba", "mamba2", "llama", "llama_tied_bf16"));

// A state holding a bf16 KV cache is refused by the same model loaded with an f32 cache.
TEST(Session, RefusesAStateOfAnotherKVCacheDtype) {
  auto [model, tok] = load("llama_tied_bf16");
  auto f32_cache = Model::load(kFixtures + "llama_tied_bf16", {.kv_cache = "f32"});
  const std::string path = testing::TempDir() + "subq_state_kv.safetensors";
  Session a(*model, tok);
  a.feed(tok.encode("hello"), 8);
  a.save(path);
  Session b(*f32_cache, tok);
  try {
    b.load(path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV cache is f32"), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
  EXPECT_THROW(Model::load(kFixtures + "llama", {.kv_cache = "f16"}), Error);
}

TEST(Session, RefusesAnotherModelsState) {
  auto m1 = load("mamba"), m2 = load("mamba2");
  const std::string path = testing::TempDir() + "subq_state_other.safetensors";
  Session a(*m1.model, m1.tokenizer);
  a.feed(m1.tokenizer.encode("hi"), 8);
  a.save(path);
  Session b(*m2.model, m2.tokenizer);
  try {
    b.load(path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

// A state file with a tensor for a layer that has no state (Nemotron-H's MLP-only layer
// 3), or for no layer at all, is refused rather than silently ignored.
TEST(Session, RefusesStateTensorsOfNoStatefulLayer) {
  auto [model, tok] = load("nemotron_h");
  const std::string path = testing::TempDir() + "subq_state_extra.safetensors";
  Session a(*model, tok);
  a.feed(tok.encode("hi"), 8);
  a.save(path);
  const SafetensorsFile saved = SafetensorsFile::open(path);
  for (const std::string extra : {"layer.3.0", "layer.9.0"}) {
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& name : saved.names()) tensors.emplace_back(name, saved.get(name));
    tensors.emplace_back(extra, saved.get("layer.0.0"));
    const std::string bad = testing::TempDir() + "subq_state_extra_bad.safetensors";
    io::write_safetensors(bad, tensors, saved.metadata());
    Session b(*model, tok);
    try {
      b.load(bad);
      ADD_FAILURE() << "loaded a state with " << extra;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("belong to no layer"), std::string::npos) << e.what();
    }
    std::remove(bad.c_str());
  }
  Session c(*model, tok);
  c.load(path);  // the file as saved still loads
  EXPECT_EQ(c.state().position(), a.state().position());
  std::remove(path.c_str());
}

TEST(Session, RejectsBadArguments) {
  auto [model, tok] = load("mamba");
  Session s(*model, tok);
  const int32_t bad[1] = {97};
  EXPECT_THROW(s.feed(bad, 4), Error);
  EXPECT_THROW(s.feed(tok.encode("a"), 0), Error);
  EXPECT_THROW(generate(s, "", {}), Error);
  EXPECT_THROW(generate(s, "a", {.sampling = {.temperature = -1.f}}), Error);
}

}  // namespace
}  // namespace subq
