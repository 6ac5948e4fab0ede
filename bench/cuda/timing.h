// Timing for the CUDA kernel benches: warm-up, then the median of repeated runs timed
// with CUDA events on subq's stream.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"

namespace subq::bench::gpu {

// Median milliseconds of one call of `fn` (which launches on cuda::stream()).
inline double median_ms(const std::function<void()>& fn, int warmup = 3, int reps = 15) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t start, stop;
  SUBQ_CUDA_CHECK(cudaEventCreate(&start));
  SUBQ_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms(static_cast<size_t>(reps));
  for (auto& m : ms) {
    SUBQ_CUDA_CHECK(cudaEventRecord(start, cuda::stream()));
    fn();
    SUBQ_CUDA_CHECK(cudaEventRecord(stop, cuda::stream()));
    SUBQ_CUDA_CHECK(cudaEventSynchronize(stop));
    SUBQ_CUDA_CHECK(cudaEventElapsedTime(&m, start, stop));
  }
  SUBQ_CUDA_CHECK(cudaEventDestroy(start));
  SUBQ_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace subq::bench::gpu
