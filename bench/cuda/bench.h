// What the CUDA bench files share: random device inputs, the JSON row every case prints,
// and the case functions main() calls by name.
#pragma once

#include <cstdio>
#include <random>
#include <string>

#include "src/core/cuda/device.h"
#include "src/ops/attention/block_mask.h"
#include "subq/ops.h"
#include "subq/tensor.h"

namespace subq::bench::gpu {

// Host f32 values as `dtype` (rounded to nearest even), in GPU memory.
inline Tensor device_as(const Tensor& f32_values, DType dtype) {
  if (dtype == DType::f32) return cuda::to_device(f32_values);
  Tensor t = Tensor::empty(dtype, f32_values.shape());
  convert(f32_values, t);
  return cuda::to_device(t);
}

// Values drawn from `dist` (never all zeros) of `dtype`, in GPU memory.
template <class Dist>
Tensor drawn_device(DType dtype, const Shape& shape, Dist dist, std::mt19937_64& rng) {
  Tensor f = Tensor::empty(DType::f32, shape);
  float* p = f.mutable_data<float>();
  for (int64_t i = 0; i < f.numel(); ++i) p[i] = dist(rng);
  return device_as(f, dtype);
}

inline Tensor random_device(DType dtype, const Shape& shape, std::mt19937_64& rng) {
  return drawn_device(dtype, shape, std::normal_distribution<float>(0.f, 1.f), rng);
}
inline Tensor uniform_device(DType dtype, const Shape& shape, float lo, float hi, std::mt19937_64& rng) {
  return drawn_device(dtype, shape, std::uniform_real_distribution<float>(lo, hi), rng);
}

inline void report(const char* op, const std::string& shape, double ms, double flops, double bytes) {
  std::printf("{\"impl\": \"subq\", \"op\": \"%s\", \"shape\": \"%s\", \"ms\": %.5f, \"tflops\": %.2f, \"gbps\": %.1f}\n",
              op, shape.c_str(), ms, flops / ms * 1e-9, bytes / ms * 1e-6);
  std::fflush(stdout);
}

// Allowed (query, key) pairs per head of a causal mask with q_block == k_block, q_offset
// 0 and whole blocks: a listed diagonal block counts half (with its diagonal), others whole.
inline double causal_block_pairs(const attn::BlockMask& m) {
  const double blk = static_cast<double>(m.q_block);
  double pairs = 0;
  for (int64_t h = 0; h < m.heads; ++h)
    for (int64_t qb = 0; qb < m.num_q_blocks(); ++qb)
      for (int32_t kb : m.row(0, h, qb)) pairs += kb == qb ? 0.5 * blk * (blk + 1) : blk * blk;
  return pairs / static_cast<double>(m.heads);
}

// A block-sparse attention row: its time beside dense causal attention on the same
// inputs, the speedup against the ideal 1 / density (summary.py prints both). `pairs`
// are the allowed (query, key) pairs, of T (T + 1) / 2 dense ones.
inline void report_sparse(const std::string& shape, const attn::BlockMask& m, double ms, double dense_ms,
                          double pairs, int64_t B, int64_t H, int64_t D) {
  const double T = static_cast<double>(m.q_len), dense_pairs = 0.5 * T * (T + 1);
  std::printf(
      "{\"impl\": \"subq\", \"op\": \"sparse_attention\", \"shape\": \"%s\", \"ms\": %.5f, \"tflops\": %.2f, "
      "\"gbps\": 0, \"density\": %.4f, \"pair_density\": %.4f, \"dense_ms\": %.5f, \"speedup\": %.2f, "
      "\"ideal\": %.2f}\n",
      shape.c_str(), ms, 4.0 * B * H * pairs * D / ms * 1e-9, m.density(), pairs / dense_pairs, dense_ms,
      dense_ms / ms, 1.0 / m.density());
  std::fflush(stdout);
}

void bench_linear(std::mt19937_64& rng);  // bench/cuda/linear.cu
void bench_delta(std::mt19937_64& rng);   // bench/cuda/delta.cu
void bench_dplr(std::mt19937_64& rng);    // bench/cuda/delta.cu
void bench_selectors(std::mt19937_64& rng);  // bench/cuda/selectors.cu
void bench_models(const std::string& root);  // bench/cuda/model.cu

}  // namespace subq::bench::gpu
