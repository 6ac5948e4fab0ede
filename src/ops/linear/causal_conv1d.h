// Short causal depthwise convolution over time with a carried window, as used in front
// of Mamba-2's SSD and Gated DeltaNet's delta rule (PyTorch Conv1d with groups = C,
// padding K - 1, output truncated to T):
//   y[t, c] = bias[c] + sum_{j<K} w[c, j] x[t - (K - 1) + j, c],   then SiLU if asked,
// where inputs before the first token come from `window` (the previous K - 1 inputs).
#pragma once

#include "subq/tensor.h"

namespace subq::ops {

// x [B, T, C] f32 (rows may be strided, channels contiguous); weight f32 [C, K]
// contiguous; bias f32 [C] or undefined; window f32 contiguous [B, K - 1, C], read and
// then advanced to the last K - 1 inputs; y f32 contiguous [B, T, C] (must not alias x).
void causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& window, const Tensor& y,
                   bool silu);

}  // namespace subq::ops
