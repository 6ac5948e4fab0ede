// The common primitives of include/subq/ops.h on NVIDIA GPUs. Tensors live in GPU
// memory (subq::cuda::to_device) and are contiguous; the math and argument rules are
// those of the CPU functions, differences noted per function. All run on cuda::stream().
#pragma once

#include <cstdint>

#include "subq/tensor.h"

namespace subq::cuda {

// y[M, N] = x[M, K] · W[N, K]^T (+ bias[N]) on tensor cores through cuBLAS, f32
// accumulation. x and W both bf16 or both f16 (activations are rounded to the weight
// dtype before the call; use convert); y f32 or the dtype of x; bias f32 or undefined.
void linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y);

// Element-wise f32 <-> bf16/f16 (round to nearest even), equal shapes.
void convert(const Tensor& src, const Tensor& dst);

// f32, last dimension is the feature dimension; y may alias x.
void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y);
void softmax(const Tensor& x, const Tensor& y);
void silu(const Tensor& x, const Tensor& y);

// NeoX rotate-half rotary embedding in place on x[T, H, Dh] (f32) over the first
// rotary_dim channels; positions i32[T] on the GPU.
void rope(const Tensor& x, const Tensor& positions, float theta, int64_t rotary_dim);

// out[T, D] (f32) = table[ids[t], :], ids i32[T], table [V, D] f32/bf16/f16, all on the
// GPU. An id outside [0, V) throws subq::Error (this waits for the kernel to finish).
void embedding(const Tensor& ids, const Tensor& table, const Tensor& out);

}  // namespace subq::cuda
