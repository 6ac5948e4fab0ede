// Family L on the GPU: Mamba-2 SSD at Mamba2-130m / 780m head shapes, simple GLA (a
// per-token scalar gate) and GLA (a per-token vector gate over dk) at 16 heads of 128, B
// chosen so that B T = 32K tokens. The peers (bench/gpu/peers.py linear) run mamba_ssm's
// mamba_chunk_scan_combined and fla's chunk_simple_gla and chunk_gla on the same shapes.
//
// FLOPs are the chunked algorithm's useful matmul work with chunks of C = 64 tokens, per
// (batch, head, chunk): the causal scores q_i . k_j for j <= i, 2 (C (C + 1) / 2) dk, their
// product with V, 2 (C (C + 1) / 2) dv, the queries against the carried state, 2 C dk dv,
// and the state update K^T V, 2 C dk dv. (The kernels also multiply the zero blocks above
// the diagonal inside each 16 x 16 tile; those are not counted.) Bytes: every input read
// once and every output written once, the f32 state both ways; the chunk states the two
// kernels pass through memory are not counted.
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>

#include "bench/cuda/bench.h"
#include "bench/cuda/timing.h"
#include "src/ops/linear/gated_linear_attention_cuda.h"

namespace subq::bench::gpu {
namespace {

constexpr int64_t kTokens = 32768;  // B T per case

double chunked_flops(int64_t B, int64_t T, int64_t H, int64_t dk, int64_t dv) {
  const double C = 64, chunks = static_cast<double>((T + 63) / 64);
  const double per_chunk = 2 * (C * (C + 1) / 2) * (dk + dv) + 4 * C * dk * dv;
  return per_chunk * chunks * static_cast<double>(B * H);
}

void bench_ssd(std::mt19937_64& rng) {
  const int64_t P = 64, N = 128, G = 1;
  for (int64_t H : {24, 48})
    for (int64_t T : {4096, 16384}) {
      const int64_t B = std::max<int64_t>(1, kTokens / T);
      // dt after softplus and A = -exp(A_log) in Mamba-2's usual ranges.
      const Tensor x = random_device(DType::bf16, {B, T, H, P}, rng);
      const Tensor dt = uniform_device(DType::f32, {B, T, H}, 0.001f, 0.1f, rng);
      const Tensor A = uniform_device(DType::f32, {H}, -8.f, -1.f, rng);
      const Tensor Bm = random_device(DType::bf16, {B, T, G, N}, rng);
      const Tensor Cm = random_device(DType::bf16, {B, T, G, N}, rng);
      const Tensor D = random_device(DType::f32, {H}, rng);
      const Tensor state = uniform_device(DType::f32, {B, H, N, P}, -1.f, 1.f, rng);
      const Tensor y = cuda::empty(DType::bf16, {B, T, H, P});
      const double ms = median_ms([&] { cuda::ssd(x, dt, A, Bm, Cm, D, state, y); });
      cuda::synchronize();
      char shape[128];
      std::snprintf(shape, sizeof shape, "B=%lld T=%lld H=%lld P=%lld N=%lld G=%lld bf16", (long long)B,
                    (long long)T, (long long)H, (long long)P, (long long)N, (long long)G);
      const double bytes = 2.0 * x.numel() + 4.0 * dt.numel() + 2.0 * (Bm.numel() + Cm.numel()) +
                           8.0 * state.numel() + 2.0 * y.numel();
      report("ssd", shape, ms, chunked_flops(B, T, H, N, P), bytes);
    }
}

// gate: per_token (simple GLA, log a [B, T, H]) or per_token_vector (GLA, [B, T, H, dk]).
void bench_gla(std::mt19937_64& rng, ops::LinearGate gate) {
  const int64_t H = 16, dk = 128, dv = 128;
  const bool vector = gate == ops::LinearGate::per_token_vector;
  for (int64_t T : {4096, 16384}) {
    const int64_t B = std::max<int64_t>(1, kTokens / T);
    const Tensor q = random_device(DType::bf16, {B, T, H, dk}, rng);
    const Tensor k = random_device(DType::bf16, {B, T, H, dk}, rng);
    const Tensor v = random_device(DType::bf16, {B, T, H, dv}, rng);
    const Tensor g = vector ? uniform_device(DType::f32, {B, T, H, dk}, -0.1f, 0.f, rng)
                            : uniform_device(DType::f32, {B, T, H}, -0.1f, 0.f, rng);
    const Tensor state = uniform_device(DType::f32, {B, H, dk, dv}, -1.f, 1.f, rng);
    const Tensor o = cuda::empty(DType::bf16, {B, T, H, dv});
    ops::LinearAttentionOptions opt;
    opt.gate = gate;
    opt.scale = 0.08838834764f;  // 128^-1/2
    const double ms = median_ms([&] { cuda::gated_linear_attention(q, k, v, g, state, o, opt); });
    cuda::synchronize();
    char shape[128];
    std::snprintf(shape, sizeof shape, "B=%lld T=%lld H=%lld dk=%lld dv=%lld %s bf16", (long long)B, (long long)T,
                  (long long)H, (long long)dk, (long long)dv, vector ? "per_token_vector" : "per_token");
    const double bytes = 2.0 * (q.numel() + k.numel() + v.numel()) + 4.0 * g.numel() + 8.0 * state.numel() +
                         2.0 * o.numel();
    report(vector ? "gla" : "simple_gla", shape, ms, chunked_flops(B, T, H, dk, dv), bytes);
  }
}

}  // namespace

void bench_linear(std::mt19937_64& rng) {
  bench_ssd(rng);
  bench_gla(rng, ops::LinearGate::per_token);
  bench_gla(rng, ops::LinearGate::per_token_vector);
}

}  // namespace subq::bench::gpu
