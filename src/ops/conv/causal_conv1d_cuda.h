// Depthwise causal conv1d (Mamba's short convolution) on NVIDIA GPUs, f32.
#pragma once

#include "subq/tensor.h"

namespace subq::cuda {

// y[b, t, d] = act(bias[d] + sum_k weight[d, k] * u[b, t + k, d]) for k in [0, W), where
// u is x[b] preceded by the W - 1 previous inputs held in state[b] ([B, W-1, D]; zeros
// when state is undefined, i.e. at a sequence start). act is SiLU when `silu`, else the
// identity. x, y [B, T, D]; weight [D, W] with W in [2, 8]; bias [D] or undefined. When
// state is defined it is updated to the last W - 1 inputs, so consecutive calls continue
// a sequence (T = 1 is the decode step). All f32, contiguous, GPU; y must not alias x.
void causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Tensor& state,
                   const Tensor& y);

}  // namespace subq::cuda
