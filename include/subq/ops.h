// subq public API: execution settings and the common CPU primitives every mixer and
// model is built from. Activations are f32; weights may be f32, bf16 or f16.
// Every function checks its arguments and throws subq::Error naming the bad one.
// Outputs are caller-allocated and may alias the input only where noted.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

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

// linear() of several weights against the same x: a layer's q, k and v projections, an
// MLP's gate and up. For the few rows of a decode step, weights of one dtype stream in
// one pass over the threads instead of one per product (on 16 threads q, k and v of 768
// x 768 each kept only 9 threads busy).
struct LinearOutput {
  Tensor w, bias, y;
};
void linear_group(const Tensor& x, std::span<const LinearOutput> outputs);

// What matrix products may round, process-wide (as torch.set_float32_matmul_precision).
// exact (the default): activations stay f32 against every weight and KV-cache dtype,
// within f32 rounding of the float64 result. bf16, where the CPU has AMX tiles or
// AVX512-BF16 dot products (elsewhere the exact path runs): linear() against bf16 weights
// with more than 32 rows of x rounds x to bf16, as PyTorch and llama.cpp do for bf16
// weights, and runs on those; with AMX, attention prefill over a bf16 KV cache also rounds
// q and the probabilities to bf16 and runs on the tiles.
enum class MatmulPrecision { exact, bf16 };
void set_matmul_precision(MatmulPrecision precision);
MatmulPrecision matmul_precision();
// Whether this CPU (and OS) runs MatmulPrecision::bf16's products: AMX-BF16 tiles or
// AVX512-BF16 dot products.
bool bf16_matmul_available();

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
// The MLP activations of the architectures subq loads: SiLU, GELU's tanh approximation
// (Hugging Face's gelu_pytorch_tanh) and Nemotron-H's squared ReLU, max(x, 0)^2.
enum class Activation { silu, gelu_tanh, relu2 };

// ---- Positions and embeddings -------------------------------------------------------
// Rotary embedding in place on x[T, H, Dh] (f32), NeoX / Llama "rotate half" layout over
// the first rotary_dim channels of each head (rotary_dim even, <= Dh); position of row t
// is positions[t] (i32[T]); inv_freq[i] = theta^(-2i / rotary_dim).
void rope(const Tensor& x, const Tensor& positions, float theta, int64_t rotary_dim);

// The rotary frequencies of Hugging Face's rope types (transformers' modeling_rope_utils),
// for context extension: linear position interpolation, Llama 3's wavelength-banded
// scaling and YaRN (NTK-by-parts interpolation with a cos/sin attention factor).
struct RopeSpec {
  enum class Type { standard, linear, llama3, yarn };
  Type type = Type::standard;
  double theta = 10000.0;
  int64_t rotary_dim = -1;  // -1: the head dim; 0: no rotary embedding
  double factor = 1.0;                                   // linear, llama3, yarn
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  double original_max_positions = 0;                     // llama3, yarn (pretraining context)
  double beta_fast = 32.0, beta_slow = 1.0;              // yarn: the ramp's rotation counts
  bool truncate = true;                                  // yarn: integer ramp ends
  double attention_factor = 1.0;                         // multiplies cos and sin
};
struct RopeTable {
  std::vector<double> inv_freq;  // rotary_dim / 2 frequencies
  double attention_factor = 1.0;
};
// Throws Error for a rotary_dim that is not even and positive or parameters outside their
// domain (theta, factor > 0; llama3 high_freq_factor > low_freq_factor; ...).
RopeTable rope_table(const RopeSpec& spec);
// rope() with the table's frequencies over its 2 * inv_freq.size() leading channels.
void rope(const Tensor& x, const Tensor& positions, const RopeTable& table);
// out[T, D] (f32) = table[ids[t], :] for ids i32[T]; table [V, D] f32/bf16/f16.
// Throws if an id is outside [0, V).
void embedding(const Tensor& ids, const Tensor& table, const Tensor& out);

}  // namespace subq
