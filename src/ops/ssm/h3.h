// The H3 layer's token mixing (Fu et al., "Hungry Hungry Hippos", 2023) between its input
// projections (q, k, v) and its output projection, built from the family's ops:
//   k'  = shift_filter * k + shift_D k             shift SSM = a causal FIR of N taps
//   kv[d1, d2, h] = k'[h dh + d1] * v[h dh + d2]   per head h of head_dim dh
//   s[d1, d2, h]  = S4D_h(kv[d1, d2, h]) + D[h] kv  diagonal SSM, one per head, shared
//   y[d2 H + h]   = sum_d1 q[h dh + d1] * s[d1, d2, h]
// (the output channel order (d2, h) is the reference implementation's). Convolution form
// from a zero state: the S4D kernel is materialised and applied with causal_long_conv.
#pragma once

#include <cstdint>

#include "src/ops/ssm/s4d.h"
#include "subq/tensor.h"

namespace subq::ops {

struct H3Params {
  int64_t d_model = 0, head_dim = 1;
  Tensor shift_filter;  // f32 [d_model, N_shift]: the shift SSM's kernel taps
  Tensor shift_D;       // f32 [d_model]
  S4DDiscrete diag;     // d_model / head_dim channels
  Tensor diag_D;        // f32 [d_model / head_dim]
};

// q, k, v, y: f32 [B, T, d_model] contiguous.
void h3_mix(const H3Params& p, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& y,
            LongConvMethod method = LongConvMethod::automatic);

}  // namespace subq::ops
