// The pool runs every range with denormals flushed and leaves the caller's mode alone,
// keeps its threads across regions of different sizes, and parallel_for_balanced runs
// every item once, its chunks in order within a range, and moves a slow range's chunks
// to other threads.
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <thread>
#include <limits>
#include <mutex>
#include <set>
#include <vector>

#include "src/core/parallel.h"
#include "subq/ops.h"

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

// Regions that give work to fewer threads than the pool has, between ones that use all of
// it (as products of different sizes do in a decode step), must not end and recreate pool
// threads: each new thread maps a stack and each ended one unmaps it, a TLB shootdown on
// every core. Linux thread ids are not reused soon, so a pool that churns shows more
// distinct ids than it has threads.
TEST(Parallel, RegionsOfDifferentSizesKeepThePoolsThreads) {
  const int saved = num_threads();
  set_num_threads(4);
  std::mutex mu;
  std::set<long> tids;
  const auto note = [&] {
    const long tid = static_cast<long>(::syscall(SYS_gettid));
    const std::lock_guard<std::mutex> lock(mu);
    tids.insert(tid);
  };
  std::atomic<int64_t> covered{0};
  for (int round = 0; round < 50; ++round) {
    parallel_for(400, 1, [&](int64_t b, int64_t e) { note(); covered += e - b; });    // 4 ranges
    parallel_for(400, 200, [&](int64_t b, int64_t e) { note(); covered += e - b; });  // 2 ranges
    parallel_for_each(3, [&](int64_t) { note(); covered += 1; });
  }
  set_num_threads(saved);
  EXPECT_EQ(covered.load(), 50 * (400 + 400 + 3));
  EXPECT_LE(tids.size(), 4u) << "the pool ended and created threads between regions";
}

TEST(Parallel, BalancedRunsEveryItemOnceInChunks) {
  const int saved = num_threads();
  for (const int threads : {1, 3, 4}) {
    set_num_threads(threads);
    for (const auto& [n, grain, chunk] : {std::array<int64_t, 3>{1, 1, 1}, {10, 1, 3}, {1000, 7, 16},
                                          {1000, 300, 64}, {997, 1, 1000}, {5, 10, 2}}) {
      std::vector<std::atomic<int>> runs(static_cast<size_t>(n));
      std::atomic<bool> too_long{false};
      parallel_for_balanced(n, grain, chunk, [&](int64_t b, int64_t e) {
        if (e - b > chunk && n / grain > 1 && threads > 1) too_long = true;
        for (int64_t i = b; i < e; ++i) runs[static_cast<size_t>(i)]++;
      });
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(runs[static_cast<size_t>(i)].load(), 1)
            << "item " << i << " of " << n << " (grain " << grain << ", chunk " << chunk << ", " << threads << " threads)";
      EXPECT_FALSE(too_long) << "a call ran more than one chunk";
    }
  }
  set_num_threads(saved);
}

// Range 0's first chunk stalls; the other threads finish their ranges and take range 0's
// remaining chunks, so items of range 0 run on more than one thread.
TEST(Parallel, BalancedMovesChunksOfASlowRange) {
  const int saved = num_threads();
  set_num_threads(4);
  const int64_t n = 400, chunk = 10;  // ranges of 100: 10 chunks each
  std::vector<long> runner(static_cast<size_t>(n), 0);
  parallel_for_balanced(n, 1, chunk, [&](int64_t b, int64_t e) {
    if (b == 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    for (int64_t i = b; i < e; ++i) runner[static_cast<size_t>(i)] = static_cast<long>(::syscall(SYS_gettid));
  });
  set_num_threads(saved);
  const std::set<long> range0(runner.begin(), runner.begin() + 100);
  EXPECT_GT(range0.size(), 1u) << "no other thread took the slow range's chunks";
}

}  // namespace
}  // namespace subq
