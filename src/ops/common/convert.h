// Internal raw-pointer dtype conversions (vectorised, single-threaded; callers split work).
#pragma once

#include <cstddef>

#include "subq/tensor.h"

namespace subq::ops {

void bf16_to_f32(const bf16* in, float* out, size_t n);
void f16_to_f32(const f16* in, float* out, size_t n);
void f32_to_bf16(const float* in, bf16* out, size_t n);  // round to nearest even
void f32_to_f16(const float* in, f16* out, size_t n);    // round to nearest even
// Widens n elements of f32/bf16/f16 to f32 (a copy for f32).
void to_f32(const void* in, DType dtype, float* out, size_t n);

}  // namespace subq::ops
