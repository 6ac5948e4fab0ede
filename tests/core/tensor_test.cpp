#include <gtest/gtest.h>

#include "subq/tensor.h"
#include "tests/support/random.h"

namespace subq {
namespace {

TEST(Tensor, ContiguousStridesAndViews) {
  Tensor t = Tensor::zeros(DType::f32, {2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.stride(0), 12);
  EXPECT_EQ(t.stride(-1), 1);
  EXPECT_TRUE(t.is_contiguous());
  Tensor v = t.view({6, -1});
  EXPECT_EQ(v.dim(1), 4);
  EXPECT_EQ(v.raw_data(), t.raw_data());
  EXPECT_THROW(t.view({5, 5}), Error);
  EXPECT_THROW(t.view({-1, 5}), Error);
}

TEST(Tensor, SliceSelectTransposeShareStorage) {
  auto rng = test::rng_for_test();
  Tensor t = test::random_tensor(rng, {3, 5, 7});
  const float* base = t.data<float>();
  Tensor s = t.slice(1, 1, 4);
  EXPECT_EQ(s.shape(), Shape({3, 3, 7}));
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.data<float>(), base + 7);
  Tensor c = s.contiguous();
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 7; ++k)
        EXPECT_EQ(c.data<float>()[(i * 3 + j) * 7 + k], base[(i * 5 + j + 1) * 7 + k]);
  Tensor sel = t.select(0, 2);
  EXPECT_EQ(sel.shape(), Shape({5, 7}));
  EXPECT_EQ(sel.data<float>(), base + 70);
  Tensor tr = t.transpose(0, 2);
  EXPECT_EQ(tr.shape(), Shape({7, 5, 3}));
  const Tensor trc = tr.contiguous();
  EXPECT_EQ(trc.data<float>()[(6 * 5 + 4) * 3 + 2], base[(2 * 5 + 4) * 7 + 6]);
  EXPECT_EQ(t.slice(1, -2, -1).dim(1), 1);
}

TEST(Tensor, MisuseGivesClearErrors) {
  Tensor t = Tensor::zeros(DType::bf16, {4, 4});
  EXPECT_THROW(t.data<float>(), Error);
  EXPECT_THROW(t.slice(0, 2, 5), Error);
  EXPECT_THROW(t.slice(2, 0, 1), Error);
  EXPECT_THROW(t.transpose(0, 1).view({16}), Error);
  EXPECT_THROW(Tensor::zeros(DType::f32, {1, 2, 3, 4, 5, 6, 7}), Error);
  EXPECT_THROW(Tensor::empty(DType::f32, {INT64_MAX / 2, 16}), Error);
  try {
    check_shape(t, Shape{4, 5}, "weight q_proj");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("weight q_proj: expected shape [4, 5], found bf16[4, 4]"), std::string::npos)
        << e.what();
  }
}

TEST(Tensor, MappedStorageIsReadOnlyAndBoundsChecked) {
  const std::string path = testing::TempDir() + "subq_map_test.bin";
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  const float vals[3] = {1.5f, -2.f, 3.25f};
  std::fwrite(vals, sizeof vals, 1, f);
  std::fclose(f);
  auto storage = Storage::map_file(path);
  EXPECT_EQ(storage->bytes(), sizeof vals);
  Tensor t = Tensor::view_of(storage, 4, DType::f32, {2});
  EXPECT_EQ(t.data<float>()[1], 3.25f);
  EXPECT_FALSE(t.writable());
  EXPECT_THROW(t.mutable_data<float>(), Error);
  EXPECT_THROW(Tensor::view_of(storage, 8, DType::f32, {2}), Error);
  EXPECT_THROW(Tensor::view_of(storage, 100, DType::f32, {0}), Error);
  EXPECT_THROW(Storage::map_file(path + ".missing"), Error);
  std::remove(path.c_str());
}

TEST(Tensor, OwningStorageIsAligned) {
  for (int64_t n : {1, 7, 33, 1000}) {
    Tensor t = Tensor::empty(DType::f32, {n});
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u);
  }
}

}  // namespace
}  // namespace subq
