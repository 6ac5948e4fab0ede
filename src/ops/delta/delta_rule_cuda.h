// The (gated) delta rule on NVIDIA tensor cores (sm_80+), the GPU counterpart of
// src/ops/delta/delta_rule.h:
//   S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale q_t),
// DeltaNet a = 1 (log_gate undefined), Gated DeltaNet log a_t = log_gate (<= 0).
#pragma once

#include "src/ops/delta/delta_rule.h"
#include "subq/tensor.h"

namespace subq::cuda {

// q [B, T, Hq, dk], k [B, T, Hk, dk], v [B, T, Hv, dv]: bf16, contiguous, on the GPU
// (H = max heads, each count divides H, head h reads q head h / (H / Hq), likewise k, v).
// beta, log_gate [B, T, H] f32 (log_gate undefined: a = 1; its values are not checked on
// the device, they must be <= 0). state f32 [B, H, dk, dv] holds the initial state and
// receives the final one, so consecutive calls continue a sequence. o [B, T, H, dv],
// bf16 or f32, must not alias an input. dk is 64 or 128; dv a multiple of 32 up to 512.
// options: l2_normalize_qk, l2_eps and scale as on the CPU; chunk must be 64 (the
// tensor-core tile); algorithm is ignored (one chunked kernel serves every T).
void delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& log_gate,
                const Tensor& state, const Tensor& o, const ops::DeltaRuleOptions& options);

}  // namespace subq::cuda
