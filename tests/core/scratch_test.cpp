// Memory kept across calls: the per-thread Scratch buffers and the cache of large host
// buffers behind Tensor::empty. Reuse is the point of both; handing one buffer to two
// live users would be the bug. Also the available memory that decides whether a
// checkpoint is read in at load.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "subq/tensor.h"

namespace subq {
namespace {

struct TagA;
struct TagB;

bool aligned64(const void* p) { return reinterpret_cast<uintptr_t>(p) % 64 == 0; }

TEST(Scratch, ReusesAThreadsBufferAndNeverSharesALiveOne) {
  const float* first = nullptr;
  {
    const Scratch<TagA, float> a(1000);
    first = a.data();
    EXPECT_TRUE(aligned64(first));
    // Same tag while the first lives: a buffer of its own.
    const Scratch<TagA, float> nested(1000);
    EXPECT_NE(nested.data(), first);
    const Scratch<TagB, float> other(1000);
    EXPECT_NE(other.data(), first);
    EXPECT_NE(other.data(), nested.data());
  }
  {
    const Scratch<TagA, float> again(500);  // smaller: the kept buffer
    EXPECT_EQ(again.data(), first);
  }
  {
    const Scratch<TagA, float> larger(100000);  // grows
    EXPECT_TRUE(aligned64(larger.data()));
    for (size_t i = 0; i < 100000; ++i) larger.data()[i] = static_cast<float>(i);
  }
  // Above the kept size: a one-off buffer, and the kept one stays the slot's.
  const size_t huge = kKeptScratchBytes / sizeof(float) + 1;
  const Scratch<TagA, float> big(huge);
  big.data()[huge - 1] = 1.f;
  const Scratch<TagA, float> kept(100000);
  EXPECT_NE(kept.data(), big.data());
}

TEST(Scratch, EachPoolThreadHasItsOwn) {
  const int threads = std::max(2, num_threads());
  std::vector<const void*> seen(static_cast<size_t>(threads), nullptr);
#pragma omp parallel num_threads(threads)
  {
    const Scratch<TagB, double> s(4096);
    seen[static_cast<size_t>(omp_get_thread_num())] = s.data();
#pragma omp barrier
  }
  for (size_t i = 0; i < seen.size(); ++i)
    for (size_t j = i + 1; j < seen.size(); ++j) EXPECT_NE(seen[i], seen[j]) << i << " " << j;
}

// Read from /proc/meminfo, not the unknown-value fallback (any machine running the tests
// has more than a MiB available).
struct TagPieces;

// The second workspace reuses the first's memory, which it left dirty: every piece must
// come back zeroed, 64-byte aligned and apart from the others.
TEST(ZeroedPieces, PiecesAreAlignedApartAndZeroedOnReuse) {
  const std::vector<int64_t> sizes{5, 0, 33, 16, 1};
  for (int round = 0; round < 2; ++round) {
    Piece p[5];
    const ZeroedPieces<TagPieces> pieces({{&p[0], sizes[0]}, {&p[1], sizes[1]}, {&p[2], sizes[2]}, {&p[3], sizes[3]},
                                          {&p[4], sizes[4]}});
    for (int i = 0; i < 5; ++i) {
      EXPECT_EQ(p[i].size, static_cast<size_t>(sizes[static_cast<size_t>(i)]));
      EXPECT_TRUE(aligned64(p[i].data()));
      if (i > 0) {
        EXPECT_GE(p[i].data(), p[i - 1].data() + p[i - 1].size);
      }
      for (size_t j = 0; j < p[i].size; ++j) {
        EXPECT_EQ(p[i][static_cast<int64_t>(j)], 0.f) << "round " << round << " piece " << i << " float " << j;
        p[i][static_cast<int64_t>(j)] = 7.f;  // dirty for the next round
      }
    }
  }
}

TEST(Storage, AvailableMemoryIsReadFromTheSystem) {
  const size_t available = Storage::available_memory();
  EXPECT_LT(available, SIZE_MAX);
  EXPECT_GT(available, size_t{1} << 20);
}

TEST(Storage, LargeBuffersAreKeptForTheNextRequestOfTheirSize) {
  Storage::release_cached();
  EXPECT_EQ(Storage::cached_bytes(), 0u);
  const Shape shape{3, 1 << 18};  // 3 MiB of f32: a 4 MiB block
  const void* freed = nullptr;
  {
    const Tensor t = Tensor::empty(DType::f32, shape);
    freed = t.raw_data();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(freed) % (uintptr_t{2} << 20), 0u);
  }
  EXPECT_EQ(Storage::cached_bytes(), size_t{4} << 20);
  const Tensor a = Tensor::empty(DType::f32, shape);
  EXPECT_EQ(a.raw_data(), freed);
  EXPECT_EQ(Storage::cached_bytes(), 0u);
  // The block is taken: a second live tensor of that size gets another one.
  const Tensor b = Tensor::empty(DType::f32, shape);
  EXPECT_NE(b.raw_data(), a.raw_data());
  const auto* pa = static_cast<const std::byte*>(a.raw_data());
  const auto* pb = static_cast<const std::byte*>(b.raw_data());
  EXPECT_TRUE(pb >= pa + a.nbytes() || pa >= pb + b.nbytes());
  // A different size class does not take it.
  const void* kept = nullptr;
  {
    const Tensor t = Tensor::empty(DType::f32, {1 << 20});  // 4 MiB
    kept = t.raw_data();
  }
  const Tensor other = Tensor::empty(DType::f32, {3 << 20});  // 12 MiB
  EXPECT_NE(other.raw_data(), kept);
  EXPECT_EQ(Storage::cached_bytes(), size_t{4} << 20);
  Storage::release_cached();
  EXPECT_EQ(Storage::cached_bytes(), 0u);
}

}  // namespace
}  // namespace subq
