// What the CUDA bench files share: random device inputs, the JSON row every case prints,
// and the case functions main() calls by name.
#pragma once

#include <cstdio>
#include <random>
#include <string>

#include "src/core/cuda/device.h"
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

void bench_linear(std::mt19937_64& rng);  // bench/cuda/linear.cu
void bench_delta(std::mt19937_64& rng);   // bench/cuda/delta.cu
void bench_dplr(std::mt19937_64& rng);    // bench/cuda/delta.cu
void bench_models(const std::string& root);  // bench/cuda/model.cu

}  // namespace subq::bench::gpu
