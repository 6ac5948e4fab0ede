#include "src/runtime/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "subq/tensor.h"
#include "tests/support/random.h"

namespace subq {
namespace {

TEST(Sampler, GreedyIsArgmax) {
  auto rng = test::rng_for_test();
  for (int rep = 0; rep < 20; ++rep) {
    const auto logits = test::normal(rng, 1001, 3.f);
    Sampler s({});
    const auto want = std::max_element(logits.begin(), logits.end()) - logits.begin();
    EXPECT_EQ(s.sample(logits, {}), want);
  }
}

TEST(Sampler, RepetitionPenaltyAsTransformers) {
  // Token 0 leads; penalised (positive logit divided by 2) it falls below token 1.
  const std::vector<float> logits = {3.f, 2.f, -1.f};
  Sampler s({.repetition_penalty = 2.f});
  EXPECT_EQ(s.sample(logits, std::vector<int32_t>{0}), 1);
  // A repeated history entry is applied once, not compounded.
  const std::vector<float> logits2 = {3.f, 1.4f, -1.f};
  EXPECT_EQ(s.sample(logits2, std::vector<int32_t>{0, 0, 0}), 0);
  // Negative logits are multiplied: -1 * 2 = -2 stays below the others.
  const std::vector<float> logits3 = {-1.f, -1.5f};
  EXPECT_EQ(s.sample(logits3, std::vector<int32_t>{0}), 1);
}

// Empirical frequencies over many draws match the filtered, renormalised softmax.
void expect_distribution(const SamplingParams& p, const std::vector<float>& logits, const std::vector<double>& want) {
  Sampler s(p);
  std::vector<int> count(logits.size(), 0);
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++count[static_cast<size_t>(s.sample(logits, {}))];
  for (size_t i = 0; i < logits.size(); ++i) {
    const double f = static_cast<double>(count[i]) / n;
    // 5 standard deviations of a binomial frequency, plus exact zeros where filtered.
    const double sd = std::sqrt(std::max(want[i] * (1 - want[i]), 1e-12) / n);
    if (want[i] == 0) EXPECT_EQ(count[i], 0) << "token " << i;
    else EXPECT_NEAR(f, want[i], 5 * sd + 1e-9) << "token " << i;
  }
}

TEST(Sampler, TemperatureTopKTopPMinP) {
  const std::vector<float> logits = {2.f, 1.f, 0.5f, 0.f, -1.f};
  std::vector<double> e;
  for (float l : logits) e.push_back(std::exp(l / 0.7));
  auto norm = [](std::vector<double> v) {
    double s = 0;
    for (double x : v) s += x;
    for (double& x : v) x /= s;
    return v;
  };
  const uint64_t seed = test::base_seed();
  expect_distribution({.temperature = 0.7f, .seed = seed}, logits, norm(e));
  expect_distribution({.temperature = 0.7f, .top_k = 2, .seed = seed}, logits, norm({e[0], e[1], 0, 0, 0}));
  // top-p: the smallest prefix whose mass reaches p.
  const auto full = norm(e);
  const float p = static_cast<float>(full[0] + full[1] + 0.5 * full[2]);
  expect_distribution({.temperature = 0.7f, .top_p = p, .seed = seed}, logits, norm({e[0], e[1], e[2], 0, 0}));
  // min-p: keep p_i >= 0.3 p_max.
  std::vector<double> kept;
  for (double x : full) kept.push_back(x >= 0.3 * full[0] ? x : 0);
  expect_distribution({.temperature = 0.7f, .min_p = 0.3f, .seed = seed}, logits, norm(kept));
}

TEST(Sampler, SeedReproducesSequence) {
  auto rng = test::rng_for_test();
  const auto logits = test::normal(rng, 500, 2.f);
  Sampler a({.temperature = 1.f, .seed = 42}), b({.temperature = 1.f, .seed = 42});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(a.sample(logits, {}), b.sample(logits, {}));
}

TEST(Sampler, RejectsBadParamsAndNaN) {
  EXPECT_THROW(Sampler({.temperature = -1.f}), Error);
  EXPECT_THROW(Sampler({.top_p = 0.f}), Error);
  EXPECT_THROW(Sampler({.min_p = 2.f}), Error);
  EXPECT_THROW(Sampler({.repetition_penalty = 0.f}), Error);
  EXPECT_THROW(Sampler({.top_k = -3}), Error);
  Sampler s({});
  const std::vector<float> bad = {1.f, NAN};
  EXPECT_THROW(s.sample(bad, {}), Error);
  EXPECT_THROW(s.sample(std::vector<float>{}, {}), Error);
}

}  // namespace
}  // namespace subq
