// Causal depthwise conv1d over token-major activations, as Mamba's short conv:
//   y[b, t, d] = act(bias[d] + sum_{k<W} w[d, k] * x[b, t - (W-1) + k, d]),
// where inputs before the first token come from `state` (the previous W-1 inputs of each
// sequence; zeros at the start of a sequence). One function serves prefill (any T) and
// decode (T = 1): the state is read as the left context and then replaced by the last
// W-1 inputs, so consecutive calls over pieces of a sequence equal one call over all.
#pragma once

#include <cstdint>

#include "subq/tensor.h"

namespace subq::ops {

inline constexpr int kConvMinWidth = 2;
inline constexpr int kConvMaxWidth = 8;

// A [B, T, D] f32 array with unit channel stride and explicit batch/token strides
// (in elements), so a slice of a wider projection can be read without a copy.
struct SeqView {
  const float* data = nullptr;
  int64_t batch_stride = 0;
  int64_t token_stride = 0;
};
struct MutSeqView {
  float* data = nullptr;
  int64_t batch_stride = 0;
  int64_t token_stride = 0;
};

// Raw form. w is [D, W] (Hugging Face's conv1d.weight [D, 1, W] viewed as [D, W]),
// bias [D] or null, state [B, W-1, D] contiguous or null (then the left context is zero
// and no state is kept). y must not overlap x or state. Parallel over the thread pool.
void causal_conv1d(int64_t batch, int64_t seqlen, int64_t channels, int width, SeqView x, const float* w,
                   const float* bias, float* state, bool silu, MutSeqView y);

// Tensor form with argument checks: x f32 [B, T, D] with contiguous channels (it may be a
// slice of a wider projection), y f32 [B, T, D] contiguous; w f32 [D, W] or
// [D, 1, W]; bias f32 [D] or undefined; state f32 [B, W-1, D] or undefined.
void causal_conv1d(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& state, bool silu,
                   const Tensor& y);

// Decode form: one token per sequence, x and y f32 [B, D], state required.
void causal_conv1d_step(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& state, bool silu,
                        const Tensor& y);

}  // namespace subq::ops
