// safetensors reader: valid files give zero-copy views with the stored values; every
// malformed header or byte range gives an Error that starts with the file's path.
#include <cstring>

#include "subq/io.h"
#include "tests/io/files.h"
#include "tests/support/random.h"

namespace subq::test {
namespace {

std::string write_st(const std::filesystem::path& dir, const std::string& header, const std::string& data,
                     const std::string& name = "model.safetensors") {
  const auto path = dir / name;
  write_file(path, safetensors_bytes(header, data));
  return path.string();
}

TEST(Safetensors, ReadsValuesOfEveryDtypeWithoutCopying) {
  auto rng = rng_for_test();
  const auto dir = scratch_dir();
  const std::vector<float> w = uniform(rng, 3 * 5);
  std::vector<uint16_t> h(7);
  for (auto& x : h) x = static_cast<uint16_t>(rng());
  std::vector<int8_t> q(5);
  for (auto& x : q) x = static_cast<int8_t>(rng());
  std::vector<int32_t> ids(3);
  for (auto& x : ids) x = static_cast<int32_t>(rng());
  // Offsets are relative to the data section; "w" comes after the others on purpose.
  const std::string data = raw_bytes(h) + raw_bytes(h) + raw_bytes(ids) + raw_bytes(q) + std::string(3, '\0') + raw_bytes(w);
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("b":{"dtype":"BF16","shape":[7],"data_offsets":[0,14]},)"
      R"("h":{"dtype":"F16","shape":[7,1],"data_offsets":[14,28]},)"
      R"("i":{"dtype":"I32","shape":[3],"data_offsets":[28,40]},)"
      R"("q":{"dtype":"I8","shape":[1,5],"data_offsets":[40,45]},)"
      R"("empty":{"dtype":"F32","shape":[0,4],"data_offsets":[45,45]},)"
      R"("w":{"dtype":"F32","shape":[3,5],"data_offsets":[48,108]}})";
  // Pad the header with spaces so the data section starts 8-byte aligned.
  std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  const std::string path = write_st(dir, padded, data);

  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"b", "empty", "h", "i", "q", "w"}));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const Tensor tw = f.get("w");
  EXPECT_EQ(tw.dtype(), DType::f32);
  EXPECT_EQ(tw.shape(), (Shape{3, 5}));
  EXPECT_FALSE(tw.writable());  // a view of the read-only mapping, not a copy
  EXPECT_EQ(std::memcmp(tw.data<float>(), w.data(), w.size() * 4), 0);
  EXPECT_EQ(std::memcmp(f.get("b").data<bf16>(), h.data(), 14), 0);
  EXPECT_EQ(f.get("h").shape(), (Shape{7, 1}));
  EXPECT_EQ(std::memcmp(f.get("h").data<f16>(), h.data(), 14), 0);
  EXPECT_EQ(std::memcmp(f.get("i").data<int32_t>(), ids.data(), 12), 0);
  EXPECT_EQ(std::memcmp(f.get("q").data<int8_t>(), q.data(), 5), 0);
  EXPECT_EQ(f.get("empty").numel(), 0);
}

// tests/data/io/tiny.safetensors (also the fuzz seed) holds known values of each dtype.
TEST(Safetensors, ReadsCommittedFixture) {
  const SafetensorsFile f = SafetensorsFile::open(std::string(SUBQ_TEST_DATA) + "/io/tiny.safetensors");
  EXPECT_EQ(f.names().size(), 5u);
  const Tensor e = f.get("embed.weight");
  ASSERT_EQ(e.shape(), (Shape{2, 3}));
  EXPECT_EQ(e.data<float>()[1], -1.25f);
  EXPECT_EQ(e.data<float>()[5], 8.0f);
  EXPECT_EQ(f.get("norm.weight").data<bf16>()[1].bits, 0xbf80);  // -1.0
  EXPECT_EQ(f.get("conv.bias").data<f16>()[1].bits, 0xc000);     // -2.0
  EXPECT_EQ(f.get("q.weight").data<int8_t>()[0], -128);
  EXPECT_EQ(f.get("ids").data<int32_t>()[1], 123456);
  EXPECT_EQ(f.metadata().at("format"), "pt");
}

TEST(Safetensors, CopiesMisalignedTensorsSoTypedAccessIsValid) {
  auto rng = rng_for_test();
  const std::vector<float> w = uniform(rng, 5);
  const std::string header = R"({"w":{"dtype":"F32","shape":[5],"data_offsets":[1,21]}})";
  const std::string path = write_st(scratch_dir(), header, std::string(1, 'x') + raw_bytes(w));
  const Tensor t = SafetensorsFile::open(path).get("w");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % alignof(float), 0u);
  EXPECT_EQ(std::memcmp(t.data<float>(), w.data(), 20), 0);
}

TEST(Safetensors, ParsesFromMemory) {
  const std::string bytes = safetensors_bytes(R"({"x":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})", "\x05\x07");
  auto storage = Storage::allocate(bytes.size());
  std::memcpy(storage->data(), bytes.data(), bytes.size());
  const Tensor t = SafetensorsFile::parse(storage, "mem").get("x");
  EXPECT_EQ(t.data<int8_t>()[1], 7);
}

// Each malformed file must throw an Error naming the path and the problem.
struct Bad {
  const char* what;
  std::string header;
  std::string data;
  std::vector<std::string> message;
};

TEST(Safetensors, RejectsMalformedHeaders) {
  const auto dir = scratch_dir();
  const std::string f4 = std::string(16, '\1');
  const std::vector<Bad> cases = {
      {"invalid JSON", R"({"w":{"dtype":"F32",)", f4, {"invalid JSON"}},
      {"not an object", R"([1,2,3])", f4, {"header must be a JSON object, found array"}},
      {"entry not an object", R"({"w":3})", f4, {"tensor 'w' must be an object"}},
      {"dtype missing", R"({"w":{"shape":[4],"data_offsets":[0,16]}})", f4, {"tensor 'w'", "'dtype' missing"}},
      {"dtype not a string", R"({"w":{"dtype":5,"shape":[4],"data_offsets":[0,16]}})", f4, {"'dtype' must be a string, found integer"}},
      {"unsupported dtype", R"({"w":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", f4, {"tensor 'w'", "'F64'"}},
      {"unknown dtype", R"({"w":{"dtype":"Q4_K","shape":[4],"data_offsets":[0,16]}})", f4, {"tensor 'w'", "'Q4_K'"}},
      {"shape not array", R"({"w":{"dtype":"F32","shape":4,"data_offsets":[0,16]}})", f4, {"'shape' must be an array"}},
      {"negative dim", R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", f4, {"non-negative", "-4"}},
      {"fractional dim", R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,16]}})", f4, {"non-negative integers"}},
      {"too many dims", R"({"w":{"dtype":"F32","shape":[1,1,1,1,1,1,4],"data_offsets":[0,16]}})", f4, {"7 dimensions"}},
      {"huge shape", R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})", f4,
       {"tensor 'w'", "more than 2^64"}},
      {"huge dim", R"({"w":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,16]}})", f4, {"too large"}},
      {"size mismatch", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", f4, {"needs 12 bytes", "give 16"}},
      {"offsets past end", R"({"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", f4, {"outside the data section of 16"}},
      {"offsets reversed", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", f4, {"outside the data section"}},
      {"offsets wrong arity", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", f4, {"[begin, end]"}},
      {"offsets negative", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[-16,0]}})", f4, {"non-negative"}},
      {"overlap", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
       f4, {"'a'", "'b'", "overlap"}},
      {"same range", R"({"a":{"dtype":"I8","shape":[4],"data_offsets":[4,8]},"b":{"dtype":"I8","shape":[4],"data_offsets":[4,8]}})",
       f4, {"overlap"}},
      {"metadata not object", R"({"__metadata__":[1]})", f4, {"__metadata__ must be an object"}},
      {"metadata value not string", R"({"__metadata__":{"format":1}})", f4, {"'format' must be a string"}},
      {"duplicate tensor", R"({"w":{"dtype":"I8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"I8","shape":[1],"data_offsets":[1,2]}})",
       f4, {"'w' appears twice"}},
      {"invalid UTF-8 name", "{\"w\xff\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}", f4, {"invalid JSON"}},
  };
  for (const Bad& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string path = write_st(dir, c.header, c.data);
    std::vector<std::string> want = c.message;
    want.insert(want.begin(), path + ": ");
    expect_error([&] { SafetensorsFile::open(path); }, want);
  }
}

TEST(Safetensors, RejectsTruncatedFiles) {
  const auto dir = scratch_dir();
  const std::string good = safetensors_bytes(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(16, '\2'));
  const auto path = (dir / "t.safetensors").string();
  for (const size_t keep : {size_t{0}, size_t{5}, size_t{8}, size_t{30}, good.size() - 16, good.size() - 1}) {
    SCOPED_TRACE(keep);
    write_file(path, good.substr(0, keep));
    expect_error([&] { SafetensorsFile::open(path); }, {path + ": "});
  }
  write_file(path, good.substr(0, 5));
  expect_error([&] { SafetensorsFile::open(path); }, {"5 bytes, too short"});
  write_file(path, good.substr(0, 30));
  expect_error([&] { SafetensorsFile::open(path); }, {"runs past the end of the file (30 bytes)"});
  write_file(path, good.substr(0, good.size() - 1));
  expect_error([&] { SafetensorsFile::open(path); }, {"outside the data section of 15 bytes"});
  // A header length near 2^64 must not wrap around.
  write_file(path, std::string(8, '\xff') + "{}");
  expect_error([&] { SafetensorsFile::open(path); }, {"runs past the end"});
  expect_error([&] { SafetensorsFile::open((dir / "absent.safetensors").string()); }, {"absent.safetensors"});
}

TEST(Safetensors, MissingTensorIsNamed) {
  const std::string path = write_st(scratch_dir(), R"({"w":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}})", "x");
  expect_error([&] { SafetensorsFile::open(path).get("model.norm.weight"); }, {path + ": ", "'model.norm.weight' not found"});
}

}  // namespace
}  // namespace subq::test
