// Long causal convolution (family C): every channel c has its own filter k[c, 0..L),
// possibly as long as the sequence (S4/S4D kernels, H3, Hyena-style filters):
//   y[b, t, c] = sum_{j <= t, j < L} k[c, j] * u[b, t - j, c].
// Two paths compute the same thing: direct (T * min(L, T) FMAs per channel, vectorised
// over channels) and FFT (FFTW3 real transforms of a size >= T + L - 1, O(T log T) per
// channel). `automatic` takes the one a cost model fitted to `subq bench --only
// ssm.long_conv` predicts faster (docs/benchmarks.md).
#pragma once

#include <cstdint>

#include "subq/tensor.h"

namespace subq::ops {

enum class LongConvMethod { automatic, direct, fft };

// Whether the automatic method uses the FFT for T tokens and a filter of L taps.
bool long_conv_uses_fft(int64_t T, int64_t L);

// Raw forms over contiguous u, y [B, T, C] and k [C, L]; y must not overlap u.
void causal_long_conv_direct(int64_t batch, int64_t seqlen, int64_t channels, const float* u, const float* k,
                             int64_t taps, float* y);
void causal_long_conv_fft(int64_t batch, int64_t seqlen, int64_t channels, const float* u, const float* k,
                          int64_t taps, float* y);

// Tensor form with argument checks: u, y f32 [B, T, C] contiguous; k f32 [C, L], L >= 1.
void causal_long_conv(const Tensor& u, const Tensor& k, const Tensor& y,
                      LongConvMethod method = LongConvMethod::automatic);

}  // namespace subq::ops
