// Internal matrix kernels behind subq::linear, callable on raw pointers by other ops.
#pragma once

#include <cstdint>

#include "subq/tensor.h"

namespace subq::ops {

// y[m, n] (+)= sum_k x[m, k] * w[n, k] for m < M, n < N: y = x · W^T with W stored
// row-major [N, K] in dtype wdt (f32, bf16 or f16). Leading dimensions are in elements.
// accumulate=false overwrites y. Parallel over the thread pool.
void gemm_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w, DType wdt,
              int64_t ldw, float* y, int64_t ldy, bool accumulate);

}  // namespace subq::ops
