// The common primitives of include/subq/ops.h on NVIDIA GPUs. Tensors live in GPU
// memory (subq::cuda::to_device) and are contiguous; the math and argument rules are
// those of the CPU functions, differences noted per function. All run on cuda::stream().
#pragma once

#include <cstdint>
#include <memory>

#include "subq/ops.h"
#include "subq/tensor.h"

namespace subq::cuda {

// y[M, N] = x[M, K] · W[N, K]^T (+ bias[N]) through cuBLAS, f32 accumulation. x and W
// both bf16 or both f16 (tensor cores; activations are rounded to the weight dtype
// before the call, use convert), or both f32 (an f32 GEMM, no TF32); y f32 or the dtype
// of x; bias f32 or undefined.
void linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y);

// Element-wise f32 <-> bf16/f16 (round to nearest even), equal shapes.
void convert(const Tensor& src, const Tensor& dst);

// Row by row copy with a dtype change: dst[.., j] = src[.., j] for j < min(widths), 0
// for the rest of a longer dst row (zero padding; a shorter one truncates). src and dst
// are [R, W] or [A, R, W] with equal leading dimensions and unit column stride; src's
// may be strided (a column or head range of a wider tensor, from slice). f32 ->
// f32/bf16/f16, bf16/f16 -> f32, bf16 -> bf16.
void copy_rows(const Tensor& src, const Tensor& dst);

// x += y, f32, equal element counts.
void add_into(const Tensor& x, const Tensor& y);
// A gated MLP's product: out[m, j] = act(gate_up[m, j]) * gate_up[m, F + j] for gate_up
// f32 [M, 2F] (the gate and up projections as one matmul), out [M, F] f32, bf16 or f16.
void gated_activation(Activation act, const Tensor& gate_up, const Tensor& out);
// y = act(x), x f32, y f32, bf16 or f16 of x's shape.
void activation(Activation act, const Tensor& x, const Tensor& y);
// x *= s, f32.
void scale(const Tensor& x, float s);

// A mixture of experts' row traffic; index i32 [n] on the GPU, made by the host and not
// checked here: every entry must be a row of the tensor it indexes.
// dst[i, :] = src[index[i], :]; src [R, W] and dst [n, W] contiguous, one dtype.
void gather_rows(const Tensor& src, const Tensor& index, const Tensor& dst);
// dst[index[i], :] += weight[i] * src[i, :]; src f32 [n, W], weight f32 [n], dst f32
// [R, W], all contiguous; the entries of index must be distinct.
void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight, const Tensor& dst);
// Mamba-2's dt: y[r, h] = clamp(softplus(x[r, h] + bias[h]), lo, hi) for x [R, H] f32
// with unit column stride (rows may be strided: a column range of in_proj's output),
// bias f32 [H], y f32 [R, H] contiguous.
void softplus_clamp(const Tensor& x, const Tensor& bias, float lo, float hi, const Tensor& y);

// f32, last dimension is the feature dimension; y may alias x.
// rms_norm: y f32, bf16 or f16 (rounded once, for a matmul in that dtype next). With a
// residual (f32, x's shape), x += residual first and the sum is normalised: the residual
// add of a pre-norm block fused into the next norm; y then aliases neither.
void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y, const Tensor& residual = {});
void softmax(const Tensor& x, const Tensor& y);
// Mamba-2's gated RMSNorm (gate first, HF MambaRMSNormGated): per row r and group of
// `group` features, v = x * silu(z), y = v * rsqrt(mean(v^2) + eps) * weight. x [R, I]
// f32 contiguous; z [R, I] f32 with unit column stride (rows may be strided); weight f32
// [I]; y [R, I] f32, bf16 or f16, contiguous, may alias x.
void gated_rms_norm(const Tensor& x, const Tensor& z, const Tensor& weight, int64_t group, float eps,
                    const Tensor& y);
void silu(const Tensor& x, const Tensor& y);

// A rotary table (subq::rope_table: frequencies of any rope type, attention factor) in
// GPU memory, uploaded once per layer.
struct DeviceRopeTable {
  std::shared_ptr<void> inv_freq;  // double [pairs] on the GPU
  int64_t pairs = 0;
  double attention_factor = 1.0;
};
DeviceRopeTable upload(const RopeTable& table);

// NeoX rotate-half rotary embedding in place on x[T, H, Dh] (f32) over the table's
// 2 * pairs leading channels, as subq::rope; positions i32[T] on the GPU. Each token's
// H heads are contiguous; tokens may be strided (a head range of a fused q/k/v).
void rope(const Tensor& x, const Tensor& positions, const DeviceRopeTable& table);

// out[T, D] (f32) = table[ids[t], :], ids i32[T], table [V, D] f32/bf16/f16, all on the
// GPU. An id outside [0, V) throws subq::Error (this waits for the kernel to finish);
// with check_ids false the caller has checked them (nothing waits; a bad id's row is NaN).
void embedding(const Tensor& ids, const Tensor& table, const Tensor& out, bool check_ids = true);

}  // namespace subq::cuda
