// The checkpoints under tests/fixtures/models were written by transformers'
// save_pretrained: every one must open, its tensors must tile the data section exactly
// (safetensors writes them back to back), and their dtype must be the config's "dtype".
#include <filesystem>

#include "subq/io.h"
#include "tests/io/files.h"

namespace subq::test {
namespace {

namespace fs = std::filesystem;

TEST(HubCheckpoint, TransformersFixturesOpen) {
  const fs::path root = fs::path(SUBQ_TEST_DATA).parent_path() / "fixtures" / "models";
  if (!fs::exists(root)) GTEST_SKIP() << "no model fixtures at " << root;
  int opened = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    SCOPED_TRACE(entry.path().string());
    const Checkpoint c = Checkpoint::open(entry.path().string());
    const Config config = Config::load((entry.path() / "config.json").string());
    const std::string want = config.get_or<std::string>("dtype", config.get_or<std::string>("torch_dtype", "float32"));
    const DType dtype = want == "bfloat16" ? DType::bf16 : want == "float16" ? DType::f16 : DType::f32;
    ASSERT_GT(c.size(), 0u);
    size_t bytes = 0;
    for (const std::string& name : c.names()) {
      const Tensor t = c.get(name);
      EXPECT_EQ(t.dtype(), dtype) << name;
      bytes += t.nbytes();
    }
    const fs::path file = entry.path() / "model.safetensors";
    const std::string head = [&] {
      std::ifstream in(file, std::ios::binary);
      std::string h(8, '\0');
      in.read(h.data(), 8);
      return h;
    }();
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = header_len << 8 | static_cast<uint8_t>(head[static_cast<size_t>(i)]);
    EXPECT_EQ(bytes, fs::file_size(file) - 8 - header_len);
    ++opened;
  }
  EXPECT_GE(opened, 1);
}

}  // namespace
}  // namespace subq::test
