// Family L on NVIDIA tensor cores (sm_80+): chunked gated linear attention with a scalar
// or a vector gate, and Mamba-2's SSD as an instance of it,
//   S_t = diag(a_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale q_t),   S in R^{dk x dv} per head,
// with bf16 q/k/v, f32 gates, f32 state and f32 accumulation (chunks of 64 tokens; the
// chunk start states pass between the two kernels in bf16).
#pragma once

#include "subq/tensor.h"
#include "src/ops/linear/gated_linear_attention.h"

namespace subq::cuda {

// q [B, T, Hq, dk], k [B, T, Hk, dk], v [B, T, Hv, dv]: bf16, contiguous, on the GPU.
// H = max(Hq, Hk, Hv) output heads; each of Hq, Hk, Hv divides H and head h reads q head
// h / (H / Hq) (likewise k, v). dk and dv are each 64 or 128.
// log_gate (f32, contiguous, on the GPU) per options.gate: none (undefined), per_head [H],
// per_token [B, T, H] or per_token_vector [B, T, H, dk] (GLA); values must be finite and
// <= 0 (not checked here: that would cost a copy to the host per call).
// state: f32 contiguous [B, H, dk, dv], the initial state on entry and the final one on
// return, so consecutive calls continue a sequence. o: bf16 or f32 [B, T, H, dv].
// options: feature_map must be identity and normalize false; options.chunk and
// options.algorithm are ignored (always chunks of 64 tokens). No argument may alias o.
void gated_linear_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_gate,
                            const Tensor& state, const Tensor& o, const ops::LinearAttentionOptions& options);

// Mamba-2 SSD: k = B, q = C, v = dt x, log a = dt A_h, plus the skip y += D_h x:
//   h_t = exp(dt_t A_h) h_{t-1} + B_t (dt_t x_t)^T,   y_t = h_t^T C_t + D_h x_t.
// x [B, T, H, P] bf16 (P = 64 or 128); dt [B, T, H] f32 (after softplus and clamping,
// >= 0); A [H] f32 (<= 0); Bm, Cm [B, T, G, N] bf16 with G dividing H (head h reads group
// h / (H / G)), N = 64 or 128; D [H] f32 or undefined. state f32 [B, H, N, P] in/out;
// y bf16 or f32 [B, T, H, P]. All contiguous on the GPU; y must not alias an input.
void ssd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm, const Tensor& D,
         const Tensor& state, const Tensor& y);

}  // namespace subq::cuda
