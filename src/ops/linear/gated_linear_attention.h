// Family L (DESIGN.md): gated linear attention with a matrix state per head,
//   S_t = diag(a_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t,   S in R^{dk x dv},
// with the gate a_t as a policy. Gates are given as log a (<= 0) so that decays over a
// chunk are differences of cumulative sums, never quotients of cumulative products.
#pragma once

#include <cstdint>

#include "subq/tensor.h"

namespace subq::ops {

enum class LinearGate {
  none,              // a = 1: plain linear attention
  per_head,          // log_gate [H]: RetNet, Lightning Attention / TransNormerLLM
  per_token,         // log_gate [B, T, H]: Mamba-2 SSD (dt * A)
  per_token_vector,  // log_gate [B, T, H, dk]: GLA, RWKV-6-style decay
};

enum class FeatureMap { identity, elu_plus_one, relu };  // phi applied to q and k

enum class LinearAlgorithm {
  automatic,  // the op's own choice (kLinearAttentionRecurrentBelow; the delta rules' options)
  chunked,    // intra-chunk masked quadratic product + carried state across chunks
  recurrent,  // token by token (a few tokens per pass over the state)
};

// LinearAlgorithm::automatic takes the chunked form only where it has an advantage the
// recurrence lacks: heads too few for the threads (the chunks of a head then split over
// threads) or q and k shared by a group of heads (Mamba-2's B and C: one q k^T per group),
// and there for inputs of at least this many tokens (Mamba2-130m's SSD on AVX-512: the
// two level from 8 to 512 tokens, the chunked form 5-10% ahead at 2048). Everything else
// runs the recurrence.
inline constexpr int64_t kLinearAttentionRecurrentBelow = 5;

struct LinearAttentionOptions {
  LinearGate gate = LinearGate::none;
  FeatureMap feature_map = FeatureMap::identity;
  // o_t / (phi(q_t) . z_t + eps) with z_t the (gated) running sum of phi(k): the state
  // then carries z as one extra value column.
  bool normalize = false;
  float normalizer_eps = 1e-6f;
  float scale = 1.f;  // multiplies phi(q)
  int64_t chunk = 64;
  LinearAlgorithm algorithm = LinearAlgorithm::automatic;
};

// q [B, T, Hq, dk], k [B, T, Hk, dk], v [B, T, Hv, dv]: f32, last dimension contiguous,
// other strides free. H = max(Hq, Hk, Hv) output heads; Hq, Hk, Hv each divide H and
// head h reads q head h / (H / Hq) (likewise k, v): GQA sharing and Mamba-2 groups.
// log_gate per options.gate (undefined for none); every value must be <= 0.
// state: f32 contiguous [B, H, dk, dv + normalize], read as the initial state and
// overwritten with the final one. o: f32 [B, T, H, dv], last dimension contiguous.
// value_scale: optional f32 [B, T, H]; v of token t for head h is multiplied by it as it
// is read (Mamba-2's dt x without materialising it).
void gated_linear_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_gate,
                            const Tensor& state, const Tensor& o, const LinearAttentionOptions& options,
                            const Tensor& value_scale = Tensor());

}  // namespace subq::ops
