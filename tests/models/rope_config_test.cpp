// Rope scaling read from config.json as the hub's checkpoints write it (top-level
// rope_theta + rope_scaling, with "rope_type" or the older "type") and as transformers 5
// writes it (rope_parameters), turned into frequencies. The expected frequencies were
// computed by transformers 5.24's ROPE_INIT_FUNCTIONS (float32) for Llama-3.1-8B's and a
// Qwen2.5-style YaRN config; the fixtures in tests/fixtures/models/llama_rope_* check the
// same types end to end against transformers' logits.
#include <gtest/gtest.h>

#include <cmath>
#include <utility>
#include <vector>

#include "src/models/architectures.h"

namespace subq {
namespace {

RopeTable table_for(const std::string& json, int64_t head_dim = 128) {
  AttentionConfig ac;
  ac.head_dim = head_dim;
  models::read_rope(Config::parse(json, "config.json"), ac);
  return rope_table(ac.rope);
}

void expect_frequencies(const RopeTable& t, const std::vector<std::pair<size_t, double>>& want) {
  ASSERT_EQ(t.inv_freq.size(), 64u);
  for (const auto& [i, f] : want) EXPECT_NEAR(t.inv_freq[i], f, 2e-7 * f) << "inv_freq[" << i << "]";
}

TEST(RopeConfig, Llama31HubConfig) {
  const RopeTable t = table_for(R"({"rope_theta": 500000.0, "max_position_embeddings": 131072,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}})");
  EXPECT_EQ(t.attention_factor, 1.0);
  expect_frequencies(t, {{0, 1.0}, {1, 0.8146172165870667}, {15, 0.046164050698280334}, {20, 0.016560440883040428},
                         {25, 0.005940730683505535}, {30, 0.0013718936825171113}, {35, 9.556212171446532e-05},
                         {40, 3.428102354519069e-05}, {45, 1.2297638932068367e-05}, {50, 4.411534519022098e-06},
                         {63, 3.068925877869333e-07}});
}

TEST(RopeConfig, YarnWithTheOlderTypeKeyAndDerivedAttentionFactor) {
  const RopeTable t = table_for(R"({"rope_theta": 1000000.0, "max_position_embeddings": 32768,
      "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}})");
  EXPECT_NEAR(t.attention_factor, 1.138629436111989, 1e-12);
  expect_frequencies(t, {{0, 1.0}, {1, 0.8058422207832336}, {15, 0.03924189880490303}, {20, 0.01333521492779255},
                         {25, 0.004131738096475601}, {30, 0.0010643609566614032}, {35, 0.0002462583943270147},
                         {40, 4.4456985051510856e-05}, {45, 1.5107409126358107e-05}, {50, 5.133812464919174e-06},
                         {63, 3.102344408034696e-07}});
}

TEST(RopeConfig, RopeParametersFormAndLinearScaling) {
  const RopeTable t = table_for(
      R"({"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0, "partial_rotary_factor": 0.5}})");
  ASSERT_EQ(t.inv_freq.size(), 32u);  // half of the 128 channels rotate
  for (size_t i = 0; i < t.inv_freq.size(); ++i)
    EXPECT_NEAR(t.inv_freq[i], std::pow(10000.0, -2.0 * static_cast<double>(i) / 64) / 4, 1e-15);
}

TEST(RopeConfig, YarnMscaleRatioAndOriginalContextFromTopLevel) {
  // DeepSeek-style: attention factor = mscale(factor, mscale) / mscale(factor, mscale_all_dim).
  const RopeTable t = table_for(R"({"rope_theta": 10000.0, "max_position_embeddings": 163840,
      "rope_scaling": {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                       "mscale": 1.0, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1}})",
                                64);
  const double m1 = 0.1 * std::log(40.0) + 1, m2 = 0.1 * 0.707 * std::log(40.0) + 1;
  EXPECT_NEAR(t.attention_factor, m1 / m2, 1e-12);
  // Without original_max_position_embeddings in the dict, llama3 takes the top-level one.
  const RopeTable l = table_for(R"({"rope_theta": 500000.0, "original_max_position_embeddings": 8192,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "rope_type": "llama3"}})");
  EXPECT_NEAR(l.inv_freq[63], 3.068925877869333e-07, 1e-13);
}

TEST(RopeConfig, UnsupportedOrIncompleteScalingIsAClearError) {
  const auto message = [](const std::string& json) {
    try {
      table_for(json);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(R"({"rope_scaling": {"type": "dynamic", "factor": 2.0}})").find("\"dynamic\""), std::string::npos);
  EXPECT_NE(message(R"({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}})").find("not supported"),
            std::string::npos);
  EXPECT_NE(message(R"({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}})")
                .find("low_freq_factor"),
            std::string::npos);
  EXPECT_NE(message(R"({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                       "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}})")
                .find("low_freq_factor < high_freq_factor"),
            std::string::npos);
  EXPECT_NE(message(R"({"rope_scaling": {"rope_type": "linear", "factor": -1.0}})").find("factor"), std::string::npos);
  EXPECT_NE(message(R"({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})").find("max_position_embeddings"),
            std::string::npos);
}

}  // namespace
}  // namespace subq
