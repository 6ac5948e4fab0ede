// Internal matrix kernels behind subq::linear, callable on raw pointers by other ops.
#pragma once

#include <cstdint>
#include <span>

#include "subq/tensor.h"

namespace subq::ops {

// y[m, n] (+)= sum_k x[m, k] * w[n, k] for m < M, n < N: y = x · W^T with W stored
// row-major [N, K] in dtype wdt (f32, bf16 or f16). Leading dimensions are in elements.
// accumulate=false overwrites y. Parallel over the thread pool.
void gemm_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w, DType wdt,
              int64_t ldw, float* y, int64_t ldy, bool accumulate);

// One of several products of the same x: y = x · W^T for W [n, K] (leading dimension
// ldw) into y (leading dimension ldy).
struct WeightOutput {
  const void* w;
  int64_t n, ldw;
  float* y;
  int64_t ldy;
};

// gemm_xwt for several weights of one dtype and width K against the same M x K x,
// overwriting each y. For the few rows of a decode step every weight's rows stream in one
// pass over the thread pool (gemv_xwt_group), not one per product.
void gemm_xwt_group(int64_t M, int64_t K, const float* x, int64_t ldx, DType wdt,
                    std::span<const WeightOutput> outputs);

}  // namespace subq::ops
