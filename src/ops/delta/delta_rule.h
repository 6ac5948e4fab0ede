// Family D (DESIGN.md): the (gated) delta rule with a matrix state per head,
//   S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t,
// S in R^{dk x dv}. DeltaNet is a = 1 (no log_gate); Gated DeltaNet gives log a_t <= 0.
#pragma once

#include <cstdint>

#include "src/ops/linear/gated_linear_attention.h"
#include "subq/tensor.h"

namespace subq::ops {

// LinearAlgorithm::automatic runs shorter inputs token by token (measured crossover on
// AVX-512, dk = dv = 128: the two tie at T = 2, chunked is 1.3x faster at T = 3).
inline constexpr int64_t kDeltaRuleRecurrentBelow = 3;

struct DeltaRuleOptions {
  // q and k divided by sqrt(|x|^2 + eps) first (Gated DeltaNet, Qwen3-Next).
  bool l2_normalize_qk = false;
  float l2_eps = 1e-6f;
  float scale = 1.f;  // multiplies q after normalisation
  int64_t chunk = 64;
  LinearAlgorithm algorithm = LinearAlgorithm::automatic;
};

// q [B, T, Hq, dk], k [B, T, Hk, dk], v [B, T, Hv, dv] (f32, last dimension contiguous;
// H = max heads, each count divides H, head h reads q head h / (H / Hq), likewise k, v);
// beta [B, T, H]; log_gate [B, T, H] with values <= 0, or undefined for a = 1.
// state f32 contiguous [B, H, dk, dv] in/out; o f32 [B, T, H, dv].
void delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& log_gate,
                const Tensor& state, const Tensor& o, const DeltaRuleOptions& options);

}  // namespace subq::ops
