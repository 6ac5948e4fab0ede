// config.json accessor: typed reads, defaults, nested objects, and errors that name the
// file and the field.
#include <cmath>

#include "subq/io.h"
#include "tests/io/files.h"

namespace subq::test {
namespace {

const char* kConfig = R"({
  "architectures": ["MambaForCausalLM"], "model_type": "mamba",
  "hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280,
  "layer_norm_epsilon": 1e-05, "rms_norm": true, "tie_word_embeddings": true,
  "time_step_scale": 1, "sliding_window": null, "big": 18446744073709551615,
  "layer_types": ["mamba", "attention"], "dims": [1, 2, 3], "mix": [1, "a"],
  "rope_scaling": {"factor": 8.0, "rope_type": "llama3", "low": {"x": "1"}}
})";

TEST(Config, ReadsTypedFields) {
  const Config c = Config::parse(kConfig, "m/config.json");
  EXPECT_EQ(c.path(), "m/config.json");
  EXPECT_EQ(c.get<int64_t>("hidden_size"), 768);
  EXPECT_DOUBLE_EQ(c.get<double>("layer_norm_epsilon"), 1e-5);
  EXPECT_DOUBLE_EQ(c.get<double>("time_step_scale"), 1.0);  // integers are numbers too
  EXPECT_TRUE(c.get<bool>("rms_norm"));
  EXPECT_EQ(c.get<std::string>("model_type"), "mamba");
  EXPECT_EQ(c.get<std::vector<std::string>>("architectures"), std::vector<std::string>{"MambaForCausalLM"});
  EXPECT_EQ(c.get<std::vector<int64_t>>("dims"), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(c.get<std::vector<double>>("dims"), (std::vector<double>{1, 2, 3}));
  EXPECT_EQ(c.get_or<int64_t>("intermediate_size", 3072), 3072);
  EXPECT_EQ(c.get_or<int64_t>("sliding_window", -1), -1);  // null counts as absent
  EXPECT_EQ(c.get_or<int64_t>("num_hidden_layers", 1), 24);
  EXPECT_TRUE(c.has("hidden_size"));
  EXPECT_FALSE(c.has("sliding_window"));
  EXPECT_FALSE(c.has("nope"));
  const Config rope = c.object("rope_scaling");
  EXPECT_DOUBLE_EQ(rope.get<double>("factor"), 8.0);
  EXPECT_EQ(rope.keys().size(), 3u);
}

TEST(Config, ReadsEncodedNonFiniteFloats) {
  const Config c = Config::parse(R"({"limit": [0.0, {"__float__": "Infinity"}], "neg": {"__float__": "-Infinity"},
                                    "bad": {"__float__": "Huge"}})", "c.json");
  const auto limit = c.get<std::vector<double>>("limit");
  ASSERT_EQ(limit.size(), 2u);
  EXPECT_EQ(limit[0], 0.0);
  EXPECT_TRUE(std::isinf(limit[1]) && limit[1] > 0);
  EXPECT_TRUE(std::isinf(c.get<double>("neg")) && c.get<double>("neg") < 0);
  EXPECT_THROW(c.get<double>("bad"), Error);
}

TEST(Config, ErrorsNameFileAndField) {
  const Config c = Config::parse(kConfig, "m/config.json");
  expect_error([&] { c.get<int64_t>("intermediate_size"); }, {"m/config.json: field 'intermediate_size' missing"});
  expect_error([&] { c.get<int64_t>("sliding_window"); }, {"field 'sliding_window' missing"});
  expect_error([&] { c.get<int64_t>("model_type"); }, {"m/config.json: field 'model_type' must be an integer, found string"});
  expect_error([&] { c.get<int64_t>("layer_norm_epsilon"); }, {"'layer_norm_epsilon' must be an integer, found number"});
  expect_error([&] { c.get<int64_t>("big"); }, {"'big' is too large"});
  expect_error([&] { c.get<bool>("hidden_size"); }, {"must be a boolean, found integer"});
  expect_error([&] { c.get<std::string>("rms_norm"); }, {"must be a string, found boolean"});
  expect_error([&] { c.get<double>("model_type"); }, {"must be a number, found string"});
  expect_error([&] { c.get<std::vector<int64_t>>("hidden_size"); }, {"must be an array, found integer"});
  expect_error([&] { c.get<std::vector<int64_t>>("mix"); }, {"field 'mix[1]' must be an integer, found string"});
  expect_error([&] { c.get_or<int64_t>("model_type", 0); }, {"'model_type' must be an integer"});
  expect_error([&] { c.object("hidden_size"); }, {"'hidden_size' must be an object, found integer"});
  expect_error([&] { c.object("rope_scaling").get<int64_t>("original_max_position_embeddings"); },
               {"m/config.json: field 'rope_scaling.original_max_position_embeddings' missing"});
  expect_error([&] { c.object("rope_scaling").object("low").get<int64_t>("x"); },
               {"field 'rope_scaling.low.x' must be an integer, found string"});
}

TEST(Config, ReadsHubStyleConfigs) {
  const Config mamba = Config::load(std::string(SUBQ_TEST_DATA) + "/io/config_mamba.json");
  EXPECT_EQ(mamba.get<std::vector<std::string>>("architectures")[0], "MambaForCausalLM");
  EXPECT_EQ(mamba.get<int64_t>("state_size"), 16);
  EXPECT_EQ(mamba.get<std::string>("time_step_rank"), "auto");
  expect_error([&] { mamba.get<int64_t>("time_step_rank"); }, {"config_mamba.json: field 'time_step_rank' must be an integer, found string"});
  const Config llama = Config::load(std::string(SUBQ_TEST_DATA) + "/io/config_llama.json");
  EXPECT_EQ(llama.get<std::vector<int64_t>>("eos_token_id"), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(llama.object("rope_scaling").get<std::string>("rope_type"), "llama3");
  EXPECT_FALSE(llama.has("sliding_window"));
}

TEST(Config, RejectsMalformedFiles) {
  expect_error([] { Config::parse("{\"a\": 1,", "c.json"); }, {"c.json: invalid JSON"});
  expect_error([] { Config::parse("[1, 2]", "c.json"); }, {"c.json: must be a JSON object, found array"});
  expect_error([] { Config::parse("", "c.json"); }, {"c.json: invalid JSON"});
  expect_error([] { Config::parse("{\"a\":1,\"a\":2}", "c.json"); }, {"'a' appears twice"});
  expect_error([] { Config::parse("{\"a\":\"\xc3\x28\"}", "c.json"); }, {"c.json: invalid JSON"});
  expect_error([] { Config::parse(std::string(100000, '[') , "c.json"); }, {"c.json: invalid JSON"});
  const auto dir = scratch_dir();
  expect_error([&] { Config::load((dir / "config.json").string()); }, {"config.json"});
  write_file(dir / "config.json", R"({"hidden_size": 64})");
  EXPECT_EQ(Config::load((dir / "config.json").string()).get<int64_t>("hidden_size"), 64);
}

}  // namespace
}  // namespace subq::test
