// Mamba-1 (S6) selective scan on NVIDIA GPUs, f32 inputs and state:
//   dt'_t[d] = softplus(dt_t[d] + dt_bias[d])   (or dt_t[d] + dt_bias[d] without softplus)
//   h_t[d,n] = exp(dt'_t[d] A[d,n]) h_{t-1}[d,n] + dt'_t[d] B_t[g(d),n] x_t[d]
//   y_t[d]   = (sum_n C_t[g(d),n] h_t[d,n] + D[d] x_t[d]) * silu(z_t[d])
// with channel d in group g(d) = d / (D / G).
#pragma once

#include "subq/tensor.h"

namespace subq::cuda {

struct SelectiveScanInputs {
  Tensor x;        // [B, T, D]
  Tensor dt;       // [B, T, D], before bias and softplus
  Tensor A;        // [D, N], negative (Mamba stores -exp(A_log))
  Tensor B;        // [B, T, G, N] or [B, T, N] (G = 1); G divides D
  Tensor C;        // same shape as B
  Tensor D;        // [D] skip; undefined: none
  Tensor z;        // [B, T, D] gate; undefined: none
  Tensor dt_bias;  // [D]; undefined: none
  bool dt_softplus = true;
};

// All tensors f32, contiguous, in GPU memory; N <= 256. `state` [B, D, N] holds the
// initial state and receives the final one, so consecutive calls continue a sequence.
// y is [B, T, D] and must not alias an input.
void selective_scan(const SelectiveScanInputs& in, const Tensor& state, const Tensor& y);

}  // namespace subq::cuda
