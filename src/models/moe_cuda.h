// A mixture of experts' few-token path on the GPU with nothing read back to the host, so
// that a captured decode graph can hold it: each token's experts chosen on the GPU by the
// CPU's rule (route_tokens), every (token, expert) pair's matmuls as matrix-vector
// products over the rows of one stacked weight, and each token's weighted sum.
#pragma once

#include "src/models/feed_forward.h"
#include "subq/tensor.h"

namespace subq::cuda {

// experts i32 / weights f32 [T, top_k]: token t's chosen experts, best first, and their
// weights, for router outputs f32 [T, E]. correction_bias: the rule's bias in GPU memory
// (group_limited) or undefined (softmax_top_k). Choices equal route_tokens' given the
// same router outputs unless two candidates' scores are within f32 rounding of each
// other (the GPU's exp differs from the CPU's by an ulp or two).
void route_experts(const RouteRule& rule, const Tensor& correction_bias, const Tensor& router_out,
                   const Tensor& experts, const Tensor& weights);

// y[p, :] = w[experts[p]] · x[row(p), :] + bias[experts[p]] for the P pairs of experts
// [T, k] (p = t * k + j). x is [T, K] (each token's row feeds its k experts) or [P, K]
// (one row per pair), f32 or w's dtype; w [E, N, K] f32/bf16/f16; bias f32 [E, N] or
// undefined; y f32 [P, N]. Every index in experts must be below E.
void expert_linear(const Tensor& x, const Tensor& experts, const Tensor& w, const Tensor& bias, const Tensor& y);

// y[t, :] = sum over j of weights[t, j] * rows[t * k + j, :]; rows f32 [T * k, W],
// weights f32 [T, k], y f32 [T, W].
void combine_experts(const Tensor& rows, const Tensor& weights, const Tensor& y);

}  // namespace subq::cuda
