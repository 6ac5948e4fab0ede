// Deterministic inputs for bench cases: uniform values from a counter hash, fast enough
// for weights of tens of millions of elements.
#pragma once

#include <cstdint>

#include "subq/tensor.h"

namespace subq::bench {

// p[i] uniform in [lo, hi), a function of (i, seed) only.
void fill_uniform(float* p, int64_t n, float lo, float hi, uint64_t seed);
Tensor random_f32(const Shape& shape, float lo, float hi, uint64_t seed);

}  // namespace subq::bench
