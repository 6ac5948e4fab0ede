// Internal raw-pointer row normalisations and softmax (one row of length n; y may alias x).
#pragma once

#include <cstddef>

namespace subq::ops {

void rms_norm_row(const float* x, const float* weight, float eps, float* y, size_t n);
void layer_norm_row(const float* x, const float* weight, const float* bias, float eps, float* y, size_t n);
void softmax_row(const float* x, float* y, size_t n);

}  // namespace subq::ops
