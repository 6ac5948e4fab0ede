// Weight checks shared by the linear-attention / delta-rule mixers: projection matrices
// stay in their dtype (f32/bf16/f16, consumed by subq::linear); small per-channel
// parameters (biases, conv taps, A_log, D, norm weights) become f32 copies.
#pragma once

#include <string>

#include "subq/tensor.h"

namespace subq::mixers {

// Throws unless w is a contiguous f32/bf16/f16 matrix of exactly `want`.
void check_projection(const Tensor& w, const Shape& want, const std::string& what);
// An f32 contiguous copy of t with shape `want`; t may be f32/bf16/f16 of any shape with
// the same element count (e.g. conv1d weights [C, 1, K] for want [C, K]).
Tensor f32_param(const Tensor& t, const Shape& want, const std::string& what);
// f32_param for optional parameters: undefined stays undefined.
Tensor optional_f32_param(const Tensor& t, const Shape& want, const std::string& what);

}  // namespace subq::mixers
