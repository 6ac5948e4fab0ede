// subq public API: execution settings and the common CPU primitives every mixer and
// model is built from. Activations are f32; weights may be f32, bf16 or f16.
// Every function checks its arguments and throws subq::Error naming the bad one.
// Outputs are caller-allocated and may alias the input only where noted.
#pragma once

#include <cstdint>
#include <string>

#include "subq/tensor.h"

namespace subq {

// ---- Execution ----------------------------------------------------------------------
// Threads used by every op. Default: SUBQ_THREADS if set, else the number of cores.
int num_threads();
void set_num_threads(int n);
// The SIMD target chosen at runtime for this CPU ("AVX3" = AVX-512, "AVX2", "SCALAR").
std::string cpu_target();

// ---- Conversion ---------------------------------------------------------------------
// Element-wise conversion between f32 and bf16/f16 (round to nearest even), any
// contiguous shapes of equal element count.
void convert(const Tensor& src, const Tensor& dst);
float to_float(bf16 v);
float to_float(f16 v);
bf16 to_bf16(float v);
f16 to_f16(float v);

// ---- Linear algebra -----------------------------------------------------------------
// y[M, N] = x[M, K] · W[N, K]^T (+ bias[N]), W row-major as Hugging Face stores it,
// f32/bf16/f16. x and y are f32 with contiguous rows (any leading shape; M = product of
// the leading dimensions). bias may be undefined. Uses the GEMV path when M is small.
void linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y);

// ---- Normalisation and activations (last dimension is the feature dimension) -----------
// y = x / sqrt(mean(x^2) + eps) * weight. y may alias x.
void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y);
// y = (x - mean) / sqrt(var + eps) * weight + bias; bias may be undefined. y may alias x.
void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, const Tensor& y);
// Numerically stable softmax over the last dimension. y may alias x.
void softmax(const Tensor& x, const Tensor& y);
// Element-wise; y may alias x.
void silu(const Tensor& x, const Tensor& y);
void softplus(const Tensor& x, const Tensor& y);
void exp(const Tensor& x, const Tensor& y);

// ---- Positions and embeddings -------------------------------------------------------
// Rotary embedding in place on x[T, H, Dh] (f32), NeoX / Llama "rotate half" layout over
// the first rotary_dim channels of each head (rotary_dim even, <= Dh); position of row t
// is positions[t] (i32[T]); inv_freq[i] = theta^(-2i / rotary_dim).
void rope(const Tensor& x, const Tensor& positions, float theta, int64_t rotary_dim);
// out[T, D] (f32) = table[ids[t], :] for ids i32[T]; table [V, D] f32/bf16/f16.
// Throws if an id is outside [0, V).
void embedding(const Tensor& ids, const Tensor& table, const Tensor& out);

}  // namespace subq
