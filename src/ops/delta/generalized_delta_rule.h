// Family D (DESIGN.md), generalized: the diagonal-plus-low-rank (DPLR) delta rule of
// RWKV-7 ("WKV-7"), with a matrix state per head,
//   S_t = (diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t,   S in R^{dk x dv},
// w_t = exp(log_w_t) a decay per key channel. RWKV-7 takes q = r, a = -kappa_hat,
// b = kappa_hat * in-context learning rate; the gated delta rule is the special case
// w = alpha, a = -k, b = alpha beta k (with v scaled by beta).
#pragma once

#include <cstdint>

#include "src/ops/linear/gated_linear_attention.h"
#include "subq/tensor.h"

namespace subq::ops {

struct GeneralizedDeltaRuleOptions {
  float scale = 1.f;  // multiplies q
  int64_t chunk = 64;
  // automatic runs the recurrence at every length: at head dims 64 and 128 the chunked
  // form does as many or more FLOPs (2 L (dk + dv) + 4 dk dv per token against 5 dk dv)
  // and measured slower on the CPU at every chunk size (docs/benchmarks.md); it is kept,
  // tested, as the form a tensor-core kernel would take.
  LinearAlgorithm algorithm = LinearAlgorithm::automatic;
};

// q, k, a, b, log_w [B, T, H, dk] and v [B, T, H, dv]: f32, last dimension contiguous,
// other strides free; log_w <= 0. state: f32 contiguous [B, H, dk, dv], read as the
// initial state and overwritten with the final one. o: f32 [B, T, H, dv]. A log_w > 0 or
// NaN throws and leaves state as it was (o may be partly written).
void generalized_delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& a, const Tensor& b,
                            const Tensor& log_w, const Tensor& state, const Tensor& o,
                            const GeneralizedDeltaRuleOptions& options);

}  // namespace subq::ops
