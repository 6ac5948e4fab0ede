// Internal raw-pointer activations (vectorised, single-threaded; y may alias x).
#pragma once

#include <cstddef>

namespace subq::ops {

void silu(const float* x, float* y, size_t n);
void softplus(const float* x, float* y, size_t n);
void exp(const float* x, float* y, size_t n);

}  // namespace subq::ops
