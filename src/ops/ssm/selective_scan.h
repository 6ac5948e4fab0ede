// Mamba-1 selective scan (S6), the diagonal recurrence of family S:
//   delta[t,d] = softplus(dt[t,d] + dt_bias[d])           (softplus and bias optional)
//   h[d,n]     = exp(delta[t,d] * A[d,n]) * h[d,n] + delta[t,d] * B[t,g(d),n] * x[t,d]
//   y[t,d]     = (sum_n C[t,g(d),n] * h[d,n] + D[d] * x[t,d]) * silu(z[t,d])   (D, z optional)
// with g(d) = d / (channels / groups): B and C are shared by channels / groups channels.
// A is given already as -exp(A_log). The state h[B, D, N] is read as the initial state and
// left holding the final state, so consecutive calls over pieces of a sequence equal one
// call over all of it. State and arithmetic are f32.
#pragma once

#include <cstdint>

#include "src/ops/conv/causal_conv1d.h"
#include "subq/tensor.h"

namespace subq::ops {

inline constexpr int64_t kScanMaxState = 256;

// How the kernel maps lanes: one channel per lane (state n in an inner loop, no
// horizontal sums) or one state element per lane (a horizontal sum per token and
// channel). `automatic` picks the measured faster one: channels for N <= 128, state
// elements above (docs/benchmarks.md).
enum class ScanLanes { automatic, channels, state };

struct SelectiveScanArgs {
  int64_t batch = 0, seqlen = 0, channels = 0, state_dim = 0, groups = 1;
  SeqView x;                        // [B, T, D]
  SeqView dt;                       // [B, T, D]
  const float* dt_bias = nullptr;   // [D] or null
  bool dt_softplus = true;
  const float* A = nullptr;         // [D, N]
  SeqView B;                        // [B, T, G, N]: token rows of G*N, groups contiguous
  SeqView C;                        // [B, T, G, N]
  const float* D = nullptr;         // [D] or null
  SeqView z;                        // [B, T, D]; data null: no gate
  float* h = nullptr;               // [B, D, N] contiguous, in/out
  MutSeqView y;                     // [B, T, D]
  ScanLanes lanes = ScanLanes::automatic;
};

// Raw form; parallel over (batch, channel block) on the thread pool.
void selective_scan(const SelectiveScanArgs& args);

// Tensor form with argument checks. x, dt, z, y: f32 [B, T, D] contiguous; A f32 [D, N];
// B, C f32 [B, T, N] (one group) or [B, T, G, N]; dt_bias, D f32 [D] or undefined; z may
// be undefined; h f32 [B, D, N], in/out.
void selective_scan(const Tensor& x, const Tensor& dt, const Tensor& dt_bias, bool dt_softplus, const Tensor& A,
                    const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& h,
                    const Tensor& y, ScanLanes lanes = ScanLanes::automatic);

}  // namespace subq::ops
