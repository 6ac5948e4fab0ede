// Family D (DESIGN.md): the (gated) delta rule with a matrix state per head,
//   S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t,
// S in R^{dk x dv}. DeltaNet is a = 1 (no log_gate); Gated DeltaNet gives log a_t <= 0.
#pragma once

#include <cstdint>

#include "src/ops/linear/gated_linear_attention.h"
#include "subq/tensor.h"

namespace subq::ops {

struct DeltaRuleOptions {
  // q and k divided by sqrt(|x|^2 + eps) first (Gated DeltaNet, Qwen3-Next).
  bool l2_normalize_qk = false;
  float l2_eps = 1e-6f;
  float scale = 1.f;  // multiplies q after normalisation
  int64_t chunk = 64;
  // automatic runs the recurrence, four tokens per two passes over the state, at every
  // length: 3 + 1/4 operations per state element and token against the chunked WY form's
  // 3 products of dk dv plus its intra-chunk ones and packing; it measured 1.4x faster at
  // Qwen3-Next's shape on a Zen 4 core (docs/benchmarks.md). The chunked form stays,
  // tested, as the form a tensor-core kernel takes.
  LinearAlgorithm algorithm = LinearAlgorithm::automatic;
};

// q [B, T, Hq, dk], k [B, T, Hk, dk], v [B, T, Hv, dv] (f32, last dimension contiguous;
// H = max heads, each count divides H, head h reads q head h / (H / Hq), likewise k, v);
// beta [B, T, H]; log_gate [B, T, H] with values <= 0, or undefined for a = 1.
// state f32 contiguous [B, H, dk, dv] in/out; o f32 [B, T, H, dv].
void delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& log_gate,
                const Tensor& state, const Tensor& o, const DeltaRuleOptions& options);

}  // namespace subq::ops
