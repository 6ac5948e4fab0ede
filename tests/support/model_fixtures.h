// The model fixtures of scripts/fixtures/make_model_fixtures.py: tiny random-init
// checkpoints with the logits transformers computed at every prompt position and its
// greedy continuation (tests/fixtures/models/NAME/expected.json).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace subq::test {

// SUBQ_TEST_DATA in the environment replaces the build's path (scripts/gpu-check runs the
// tests from another checkout on the GPU machine).
inline const std::string kModelFixtures =
    std::string(std::getenv("SUBQ_TEST_DATA") ? std::getenv("SUBQ_TEST_DATA") : SUBQ_TEST_DATA) + "/../fixtures/models/";

struct FixturePrompt {
  std::vector<int32_t> ids;
  std::vector<std::vector<double>> logits;
  std::vector<int32_t> greedy;
};

inline std::vector<FixturePrompt> fixture_prompts(const std::string& name) {
  std::ifstream f(kModelFixtures + name + "/expected.json");
  const auto j = nlohmann::json::parse(f);
  std::vector<FixturePrompt> out;
  for (const auto& p : j["prompts"])
    out.push_back({p["ids"].get<std::vector<int32_t>>(), p["logits"].get<std::vector<std::vector<double>>>(),
                   p["greedy"].get<std::vector<int32_t>>()});
  return out;
}

inline int32_t argmax(const float* v, int64_t n) { return static_cast<int32_t>(std::max_element(v, v + n) - v); }

}  // namespace subq::test
