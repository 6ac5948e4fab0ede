// The one thread pool: OpenMP. parallel_for splits [0, n) into contiguous ranges, one
// per thread, and runs fn(begin, end) on each; it returns when all are done.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace subq {

int num_threads();

// Runs fn(begin, end) over [0, n) in at most num_threads() ranges of at least `grain`
// items each. Runs inline when one range suffices (small n, one thread, or nested).
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  const int64_t max_ranges = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  const int ranges = static_cast<int>(std::min<int64_t>(num_threads(), max_ranges));
  if (ranges <= 1 || omp_in_parallel()) {
    fn(int64_t{0}, n);
    return;
  }
#pragma omp parallel for num_threads(ranges) schedule(static, 1)
  for (int r = 0; r < ranges; ++r) {
    const int64_t begin = n * r / ranges;
    const int64_t end = n * (r + 1) / ranges;
    fn(begin, end);
  }
}

// Runs fn(i) for every i in [0, n), dynamically balanced (for uneven work items).
template <class F>
void parallel_for_each(int64_t n, F&& fn) {
  if (n <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), n));
  if (threads <= 1 || omp_in_parallel()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace subq
