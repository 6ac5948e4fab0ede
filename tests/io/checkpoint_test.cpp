// Checkpoints: a directory with one file or with shards behind
// model.safetensors.index.json; inconsistent indexes are errors that name the tensor.
#include <cstring>

#include "subq/io.h"
#include "tests/io/files.h"
#include "tests/support/random.h"

namespace subq::test {
namespace {

// A shard holding f32 tensors of shape [n] named `names`, filled from `rng`.
std::vector<std::vector<float>> write_shard(std::mt19937_64& rng, const std::filesystem::path& path,
                                            const std::vector<std::string>& names, int64_t n) {
  std::string header = "{", data;
  std::vector<std::vector<float>> values;
  for (const std::string& name : names) {
    values.push_back(uniform(rng, static_cast<size_t>(n)));
    if (header.size() > 1) header += ",";
    header += "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(n) + "],\"data_offsets\":[" +
              std::to_string(data.size()) + "," + std::to_string(data.size() + 4 * n) + "]}";
    data += raw_bytes(values.back());
  }
  write_file(path, safetensors_bytes(header + "}", data));
  return values;
}

std::string index_json(const std::string& weight_map) {
  return R"({"metadata":{"total_size":28},"weight_map":{)" + weight_map + "}}";
}

TEST(Checkpoint, OpensShardedDirectory) {
  auto rng = rng_for_test();
  const auto dir = scratch_dir();
  const auto a = write_shard(rng, dir / "model-00001-of-00002.safetensors", {"embed", "layer.0"}, 3);
  const auto b = write_shard(rng, dir / "model-00002-of-00002.safetensors", {"head"}, 5);
  write_file(dir / "model.safetensors.index.json",
             index_json(R"("embed":"model-00001-of-00002.safetensors","layer.0":"model-00001-of-00002.safetensors",)"
                        R"("head":"model-00002-of-00002.safetensors")"));
  const Checkpoint c = Checkpoint::open(dir.string());
  EXPECT_EQ(c.names(), (std::vector<std::string>{"embed", "head", "layer.0"}));
  EXPECT_EQ(c.size(), 3u);
  EXPECT_EQ(std::memcmp(c.get("head").data<float>(), b[0].data(), 20), 0);
  EXPECT_EQ(std::memcmp(c.get("layer.0", DType::f32, Shape{3}).data<float>(), a[1].data(), 12), 0);
  EXPECT_EQ(c.get_float("embed", Shape{3}).numel(), 3);
  expect_error([&] { c.get("layer.0", DType::bf16, Shape{3}); }, {"model-00001-of-00002.safetensors: ", "'layer.0'", "f32[3]", "expected bf16[3]"});
  expect_error([&] { c.get("layer.0", DType::f32, Shape{1, 3}); }, {"'layer.0'", "expected f32[1, 3]"});
  expect_error([&] { c.get("lm_head.weight"); }, {"model.safetensors.index.json: ", "'lm_head.weight' not found"});
}

// populate() reads files in 64 MiB parts: a 68 MiB shard and a small one give three
// reports, the last at the two files' size, and leave the tensors as they were.
TEST(Checkpoint, PopulateReadsEveryShardInParts) {
  auto rng = rng_for_test();
  const auto dir = scratch_dir();
  const auto a = write_shard(rng, dir / "model-00001-of-00002.safetensors", {"big"}, int64_t{17} << 20);
  const auto b = write_shard(rng, dir / "model-00002-of-00002.safetensors", {"small"}, 5);
  write_file(dir / "model.safetensors.index.json",
             index_json(R"("big":"model-00001-of-00002.safetensors","small":"model-00002-of-00002.safetensors")"));
  const Checkpoint c = Checkpoint::open(dir.string());
  std::vector<std::pair<int64_t, int64_t>> calls;
  c.populate([&](int64_t done, int64_t total) { calls.emplace_back(done, total); });
  const auto bytes = static_cast<int64_t>(std::filesystem::file_size(dir / "model-00001-of-00002.safetensors") +
                                          std::filesystem::file_size(dir / "model-00002-of-00002.safetensors"));
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0], std::make_pair(int64_t{64} << 20, bytes));
  EXPECT_EQ(calls[2], std::make_pair(bytes, bytes));
  EXPECT_EQ(std::memcmp(c.get("big").data<float>(), a[0].data(), a[0].size() * 4), 0);
  EXPECT_EQ(std::memcmp(c.get("small").data<float>(), b[0].data(), 20), 0);
}

TEST(Checkpoint, OpensSingleFileDirectory) {
  auto rng = rng_for_test();
  const auto dir = scratch_dir();
  const auto v = write_shard(rng, dir / "model.safetensors", {"w"}, 7);
  const Checkpoint c = Checkpoint::open(dir.string());
  EXPECT_EQ(std::memcmp(c.get("w").data<float>(), v[0].data(), 28), 0);
  EXPECT_EQ(Checkpoint::open((dir / "model.safetensors").string()).size(), 1u);
  expect_error([&] { Checkpoint::open((dir / "nothing").string()); }, {"nothing"});
  std::filesystem::create_directories(dir / "empty");
  expect_error([&] { Checkpoint::open((dir / "empty").string()); }, {"no model.safetensors"});
}

TEST(Checkpoint, RejectsInconsistentIndexes) {
  auto rng = rng_for_test();
  const auto dir = scratch_dir();
  write_shard(rng, dir / "s1.safetensors", {"a", "b"}, 2);
  write_shard(rng, dir / "s2.safetensors", {"b", "c"}, 2);
  write_shard(rng, dir / "s3.safetensors", {"d"}, 2);
  const auto index = dir / "model.safetensors.index.json";
  struct Case {
    const char* what;
    std::string json;
    std::vector<std::string> message;
  };
  const std::vector<Case> cases = {
      {"missing shard", index_json(R"("a":"s1.safetensors","x":"s9.safetensors")"), {"shard 's9.safetensors'", "'x'", "does not exist"}},
      {"listed but absent", index_json(R"("a":"s1.safetensors","d":"s1.safetensors")"), {"tensor 'd'", "absent from"}},
      {"in two shards", index_json(R"("a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors")"), {"'b'", "two shards"}},
      {"not listed", index_json(R"("a":"s1.safetensors")"), {"'b'", "not listed in weight_map"}},
      {"path traversal", index_json(R"("a":"../s1.safetensors")"), {"'../s1.safetensors'", "not a file name"}},
      {"absolute path", index_json(R"("a":"/etc/passwd")"), {"not a file name"}},
      {"shard not string", index_json(R"("a":1)"), {"'a' must be a string"}},
      {"no weight_map", R"({"metadata":{}})", {"'weight_map' missing"}},
      {"weight_map array", R"({"weight_map":[]})", {"'weight_map' must be an object"}},
      {"empty weight_map", R"({"weight_map":{}})", {"lists no tensors"}},
      {"invalid JSON", R"({"weight_map":{"a":)", {"invalid JSON"}},
      {"duplicate key", R"({"weight_map":{"a":"s1.safetensors","a":"s2.safetensors"}})", {"'a' appears twice"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    write_file(index, c.json);
    std::vector<std::string> want = c.message;
    want.insert(want.begin(), index.string() + ": ");
    expect_error([&] { Checkpoint::open(dir.string()); }, want);
  }
  // A shard that is itself malformed reports the shard's path.
  write_file(dir / "s4.safetensors", "garbage");
  write_file(index, index_json(R"("a":"s4.safetensors")"));
  expect_error([&] { Checkpoint::open(dir.string()); }, {(dir / "s4.safetensors").string() + ": ", "too short"});
}

}  // namespace
}  // namespace subq::test
