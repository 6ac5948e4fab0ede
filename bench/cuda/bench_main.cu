// subq_cuda_bench: times subq's CUDA kernels on the GPU machine and prints one JSON
// object per line (scripts/gpu-check collects them next to the PyTorch peers' lines,
// measured in the same call). Inputs are random (never zeros); each case checks the
// last launch's error by synchronising.
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda/timing.h"
#include "src/ops/attention/flash_attention.h"
#include "subq/ops.h"

namespace subq::bench::gpu {
namespace {

Tensor random_device(DType dtype, const Shape& shape, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.f, 1.f);
  Tensor f = Tensor::empty(DType::f32, shape);
  float* p = f.mutable_data<float>();
  for (int64_t i = 0; i < f.numel(); ++i) p[i] = dist(rng);
  if (dtype == DType::f32) return cuda::to_device(f);
  Tensor t = Tensor::empty(dtype, shape);
  convert(f, t);
  return cuda::to_device(t);
}

void report(const char* op, const std::string& shape, double ms, double flops, double bytes) {
  std::printf("{\"impl\": \"subq\", \"op\": \"%s\", \"shape\": \"%s\", \"ms\": %.5f, \"tflops\": %.2f, \"gbps\": %.1f}\n",
              op, shape.c_str(), ms, flops / ms * 1e-9, bytes / ms * 1e-6);
  std::fflush(stdout);
}

void bench_attention(std::mt19937_64& rng) {
  const int64_t H = 16, D = 128;
  for (int64_t T : {4096, 8192, 16384, 32768}) {
    const int64_t B = std::max<int64_t>(1, 16384 / T);
    const Tensor q = random_device(DType::bf16, {B, T, H, D}, rng);
    const Tensor k = random_device(DType::bf16, {B, T, H, D}, rng);
    const Tensor v = random_device(DType::bf16, {B, T, H, D}, rng);
    const Tensor o = cuda::empty(DType::bf16, {B, T, H, D});
    for (bool causal : {true, false}) {
      const double ms = median_ms([&] { cuda::flash_attention(q, k, v, o, causal, 0.08838834764f); });
      cuda::synchronize();
      const double flops = 4.0 * B * H * T * T * D / (causal ? 2 : 1);
      char shape[128];
      std::snprintf(shape, sizeof shape, "B=%lld T=%lld H=%lld D=%lld %s", (long long)B, (long long)T, (long long)H,
                    (long long)D, causal ? "causal" : "full");
      report("attention", shape, ms, flops, 4.0 * q.nbytes());
    }
  }
}

}  // namespace
}  // namespace subq::bench::gpu

int main(int argc, char** argv) {
  using namespace subq::bench::gpu;
  try {
    subq::cuda::require_device();
    std::mt19937_64 rng(20261124);
    const std::string only = argc > 1 ? argv[1] : "";
    if (only.empty() || only == "attention") bench_attention(rng);
  } catch (const subq::Error& e) {
    std::fprintf(stderr, "subq_cuda_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
