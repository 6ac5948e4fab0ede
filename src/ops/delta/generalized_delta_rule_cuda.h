// The generalized (diagonal-plus-low-rank) delta rule of RWKV-7 on NVIDIA GPUs (sm_80+),
// the GPU counterpart of src/ops/delta/generalized_delta_rule.h:
//   S_t = (diag(exp(log_w_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale q_t).
#pragma once

#include "src/ops/delta/generalized_delta_rule.h"
#include "subq/tensor.h"

namespace subq::cuda {

// q, k, a, b [B, T, H, dk] and v [B, T, H, dv]: bf16; log_w [B, T, H, dk]: f32 (<= 0, not
// checked on the device); all contiguous, on the GPU. state f32 [B, H, dk, dv] holds the
// initial state and receives the final one, so consecutive calls continue a sequence.
// o [B, T, H, dv], bf16 or f32, must not alias an input. dk is 64 or 128; dv a multiple
// of 8. options: scale as on the CPU; chunk and algorithm are ignored (one recurrent
// kernel serves every T, see generalized_delta_rule.cu).
void generalized_delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& a, const Tensor& b,
                            const Tensor& log_w, const Tensor& state, const Tensor& o,
                            const ops::GeneralizedDeltaRuleOptions& options);

}  // namespace subq::cuda
