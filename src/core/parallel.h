// The one thread pool: OpenMP. parallel_for splits [0, n) into contiguous ranges, one
// per thread, and runs fn(begin, end) on each; it returns when all are done
// (parallel_for_balanced lets threads that finish early take over the rest of others').
// Every range runs with denormals flushed (see DenormalsFlushed), on the pool's threads
// and inline.
#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace subq {

int num_threads();

// Flush-to-zero and denormals-are-zero for the calling thread while it lives, then the
// thread's previous mode again. Decays exp(G_i - G_j) of strongly gated recurrences pass
// through the denormal range, where every x86 FMA on such an operand takes a microcode
// assist: measured 1.45x slower Mamba-2 prefill on AVX-512 without this. Values below
// 1.2e-38 become 0, far under every tolerance subq works to. No-op off x86.
class DenormalsFlushed {
 public:
#if defined(__x86_64__) || defined(__i386__)
  DenormalsFlushed() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero); }
  ~DenormalsFlushed() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
  unsigned saved_;
#endif
  DenormalsFlushed(const DenormalsFlushed&) = delete;
  DenormalsFlushed& operator=(const DenormalsFlushed&) = delete;
};

// Every parallel region runs a team of num_threads(), even when fewer threads have work:
// libgomp ends the pool's surplus threads whenever a team is smaller than the one before
// and creates them again for the next larger one. Products whose grain gave them 9 of 16
// threads, between ones that took all 16, made Llama-160M decode end and create ~7
// threads per product (8 MiB stacks mapped and unmapped, ~480K TLB shootdowns in one
// bench run): 36-42 tok/s on 16 threads of a Xeon VM, 213-280 with the whole team.

namespace detail {

// The ranges of at least `grain` items [0, n) splits into on the pool, at most one per
// thread; 1 where the call should run inline (nested in a parallel region).
inline int range_count(int64_t n, int64_t grain) {
  if (omp_in_parallel()) return 1;
  const int64_t max_ranges = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  return static_cast<int>(std::min<int64_t>(num_threads(), max_ranges));
}

// A range's next unclaimed item and its end, on a cache line of its own.
struct alignas(64) RangeCursor {
  std::atomic<int64_t> next{0};
  int64_t end = 0;
};

// The calling thread's cursors, grown to the largest team it has run.
inline RangeCursor* range_cursors(int n) {
  thread_local std::unique_ptr<RangeCursor[]> cursors;
  thread_local int capacity = 0;
  if (capacity < n) {
    cursors.reset(new RangeCursor[static_cast<size_t>(n)]);
    capacity = n;
  }
  return cursors.get();
}

}  // namespace detail

// Runs fn(begin, end) over [0, n) in at most num_threads() ranges of at least `grain`
// items each. Runs inline when one range suffices (small n, one thread, or nested).
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  const int ranges = detail::range_count(n, grain);
  if (ranges <= 1) {
    const DenormalsFlushed flushed;
    fn(int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(num_threads())
  {
    const DenormalsFlushed flushed;
#pragma omp for schedule(static, 1)
    for (int r = 0; r < ranges; ++r) {
      const int64_t begin = n * r / ranges;
      const int64_t end = n * (r + 1) / ranges;
      fn(begin, end);
    }
  }
}

// parallel_for whose ranges are claimed `chunk` items at a time: each thread runs its own
// range in order, then takes the unclaimed chunks of the others. Where other work shares
// the cores a static split waits for the slowest thread; a throwaway driver streamed
// decode-sized products 1.1-1.3x faster this way on 16 threads of a Xeon VM. Chunks of
// one range run in order on its thread unless another takes them, so streams stay
// sequential.
template <class F>
void parallel_for_balanced(int64_t n, int64_t grain, int64_t chunk, F&& fn) {
  if (n <= 0) return;
  const int ranges = detail::range_count(n, grain);
  if (ranges <= 1) {
    const DenormalsFlushed flushed;
    fn(int64_t{0}, n);
    return;
  }
  chunk = std::max<int64_t>(1, chunk);
  detail::RangeCursor* cursors = detail::range_cursors(ranges);
  for (int r = 0; r < ranges; ++r) {
    cursors[r].next.store(n * r / ranges, std::memory_order_relaxed);
    cursors[r].end = n * (r + 1) / ranges;
  }
#pragma omp parallel num_threads(num_threads())
  {
    const DenormalsFlushed flushed;
    const int me = omp_get_thread_num();
    for (int j = 0; me < ranges && j < ranges; ++j) {
      detail::RangeCursor& c = cursors[(me + j) % ranges];
      for (int64_t b; (b = c.next.fetch_add(chunk, std::memory_order_relaxed)) < c.end;)
        fn(b, std::min(b + chunk, c.end));
    }
  }
}

// Runs fn(i) for every i in [0, n), dynamically balanced (for uneven work items).
template <class F>
void parallel_for_each(int64_t n, F&& fn) {
  if (n <= 0) return;
  if (num_threads() <= 1 || n == 1 || omp_in_parallel()) {
    const DenormalsFlushed flushed;
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
#pragma omp parallel num_threads(num_threads())
  {
    const DenormalsFlushed flushed;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) fn(i);
  }
}

}  // namespace subq
