// S4D / diagonal S4: a time-invariant SSM per channel with M complex modes (conjugate
// pairs implied, i.e. a real state of size N = 2M):
//   continuous:  s' = A s + B u,  y = 2 Re(C s) + D u,   A, B, C complex diagonal [H, M]
//   ZOH:         dA = exp(dt A),  dB = (dA - 1) / A * B
//   recurrence:  s_t = dA s_{t-1} + dB u_t,   y_t = 2 Re(sum_m C_m s_t,m) + D u_t
//   convolution: y = K * u + D u,  K[l] = 2 Re(sum_m C_m dB_m dA_m^l)   (from a zero state)
// The three forms (recurrence over a sequence, the materialised kernel applied by a long
// causal convolution, and the decode step) compute the same outputs. Sequences are
// token-major [B, T, H]; the recurrent state is [B, H, M] complex, stored as (re, im) f32.
#pragma once

#include <complex>
#include <cstdint>
#include <vector>

#include "src/ops/conv/long_conv.h"

namespace subq::ops {

// Diagonal initialisations of A from the S4D paper (Gu et al. 2022), for a real state of
// size N (even): the M = N/2 entries with non-negative imaginary part.
//   lin:  A_m = -1/2 + i pi m
//   inv:  A_m = -1/2 + i (N / pi) (N / (2m + 1) - 1)
//   legs: the eigenvalues of the normal part of HiPPO-LegS (S4D-LegS): -1/2 + i w_m,
//         +-i w_m being the eigenvalues of its skew-symmetric part.
enum class S4DInit { lin, inv, legs };
std::vector<std::complex<double>> s4d_init_A(int64_t state_size, S4DInit init);

// Continuous parameters of H channels with M modes each; dt [H] is the step (> 0).
struct S4DParams {
  int64_t channels = 0, modes = 0;
  std::vector<std::complex<double>> A, B, C;  // [H, M]
  std::vector<double> dt;                     // [H]
};

// Zero-order-hold discretisation, rounded to f32 (computed in double).
struct S4DDiscrete {
  int64_t channels = 0, modes = 0;
  std::vector<std::complex<float>> dA, dB, C;  // [H, M]
};
S4DDiscrete s4d_discretize_zoh(const S4DParams& p);

// K[h, l] for l < L, written to K [H, L]: the recurrence's impulse response, with powers of
// dA re-anchored from double every 64 steps so the kernel stays accurate at any L.
void s4d_kernel(const S4DDiscrete& s, int64_t L, float* K);

// The recurrence over u [B, T, H] -> y [B, T, H], continuing from state [B, H, M] (complex
// as (re, im) f32 pairs) and leaving the final state there. D [H] or null. T = 1 is the
// decode step.
void s4d_scan(const S4DDiscrete& s, int64_t batch, int64_t seqlen, const float* u, const float* D, float* state,
              float* y);

// Convolution form from a zero state: y = K * u + D u with the kernel materialised for T
// taps and applied by causal_long_conv (FFT or direct by `method`).
void s4d_conv(const S4DDiscrete& s, int64_t batch, int64_t seqlen, const float* u, const float* D, float* y,
              LongConvMethod method = LongConvMethod::automatic);

}  // namespace subq::ops
