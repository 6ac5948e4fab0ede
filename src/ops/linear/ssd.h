// Mamba-2's state-space duality (SSD) layer as an instance of gated linear attention:
//   h_t = exp(dt_t A_h) h_{t-1} + (dt_t B_t) x_t^T,   y_t = h_t^T C_t + D_h x_t,
// i.e. a per-token scalar gate log a = dt A, k = B, v = dt x, q = C, with G groups of
// B/C shared across the H heads (head h reads group h / (H / G)).
#pragma once

#include <cstdint>

#include "subq/tensor.h"

namespace subq::ops {

// x [B, T, H, P], dt [B, T, H] (already softplus'ed and clamped, >= 0), A [H] (<= 0),
// Bm / Cm [B, T, G, N], D [H] or undefined; all f32, last dimensions contiguous.
// state f32 contiguous [B, H, N, P] in/out; y f32 [B, T, H, P]. chunk: see
// LinearAttentionOptions (0 picks the default).
void ssd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm, const Tensor& D,
         const Tensor& state, const Tensor& y, int64_t chunk = 0);

}  // namespace subq::ops
