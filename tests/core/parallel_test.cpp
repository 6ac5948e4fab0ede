// The pool runs every range with denormals flushed and leaves the caller's mode alone.
#include <gtest/gtest.h>

#include <atomic>
#include <limits>
#include <vector>

#include "src/core/parallel.h"

namespace subq {
namespace {

// A denormal times one: itself, or 0 when denormals are treated as zero.
float denormal_product() {
  volatile float tiny = std::numeric_limits<float>::denorm_min() * 1000.f;
  volatile float one = 1.f;
  return tiny * one;
}

TEST(Parallel, RangesRunWithDenormalsFlushedAndTheCallerKeepsItsMode) {
#if defined(__x86_64__) || defined(__i386__)
  ASSERT_GT(denormal_product(), 0.f) << "the test process itself must start with denormals on";
  std::atomic<int> nonzero{0}, ran{0};
  parallel_for(64, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      ran += 1;
      if (denormal_product() != 0.f) nonzero += 1;
    }
  });
  parallel_for_each(16, [&](int64_t) {
    ran += 1;
    if (denormal_product() != 0.f) nonzero += 1;
  });
  parallel_for(1, 1, [&](int64_t, int64_t) {  // the inline path
    ran += 1;
    if (denormal_product() != 0.f) nonzero += 1;
  });
  EXPECT_EQ(ran.load(), 64 + 16 + 1);
  EXPECT_EQ(nonzero.load(), 0);
  EXPECT_GT(denormal_product(), 0.f) << "the caller's floating-point mode was not restored";
#else
  GTEST_SKIP() << "denormal flushing is x86-only";
#endif
}

}  // namespace
}  // namespace subq
