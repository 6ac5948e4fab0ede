// Gated delta rule at Qwen3-Next-like shapes: dk = dv = 128, 16 key heads with 16 or 32
// value heads, l2-normalised q and k, bf16 in and out, f32 state in and out, B * T = 32K.
#include <cstdio>
#include <random>

#include "bench/cuda/bench.h"
#include "bench/cuda/timing.h"
#include "src/ops/delta/delta_rule_cuda.h"

namespace subq::bench::gpu {

// FLOPs: the tensor-core products of the chunked algorithm as run, 2 per multiply-add,
// per chunk of C = 64 tokens and head: K K^T and Q K^T over the 10 lower 16x16 blocks of
// 16 (2 * 2 * 10/16 * C^2 dk); K S, Q S and the state update K^T V' (2 * 3 * C dk dv);
// (I + M)^-1 R and (Q K^T masked) V' over the lower blocks (2 * 2 * 10/16 * C^2 dv). The
// f32 triangular inverse (about C^3 / 3 per chunk, 3% of the rest here) is not counted.
// Bytes: q, k, v, beta, log_gate read once, o written once, the state read and written.
void bench_delta(std::mt19937_64& rng) {
  const int64_t dk = 128, dv = 128, C = 64, Hk = 16;
  for (int64_t T : {4096, 16384}) {
    const int64_t B = 32768 / T;
    for (int64_t Hv : {16, 32}) {
      const int64_t H = Hv;
      const Tensor q = random_device(DType::bf16, {B, T, Hk, dk}, rng);
      const Tensor k = random_device(DType::bf16, {B, T, Hk, dk}, rng);
      const Tensor v = random_device(DType::bf16, {B, T, Hv, dv}, rng);
      const Tensor beta = uniform_device(DType::f32, {B, T, H}, 0.05f, 1.f, rng);
      const Tensor g = uniform_device(DType::f32, {B, T, H}, -0.1f, 0.f, rng);
      const Tensor state = uniform_device(DType::f32, {B, H, dk, dv}, -0.1f, 0.1f, rng);
      const Tensor o = cuda::empty(DType::bf16, {B, T, H, dv});
      ops::DeltaRuleOptions opt;
      opt.l2_normalize_qk = true;
      opt.scale = 0.08838834764f;  // 1 / sqrt(dk)
      const double ms = median_ms([&] { cuda::delta_rule(q, k, v, beta, g, state, o, opt); });
      cuda::synchronize();
      const double chunks = static_cast<double>(B) * H * ((T + C - 1) / C);
      const double tri = 10.0 / 16.0;
      const double flops = chunks * (4.0 * tri * C * C * dk + 6.0 * C * dk * dv + 4.0 * tri * C * C * dv);
      const double bytes = 2.0 * (q.numel() + k.numel() + v.numel() + o.numel()) + 4.0 * 2 * B * T * H +
                           4.0 * 2 * state.numel();
      char shape[160];
      std::snprintf(shape, sizeof shape, "B=%lld T=%lld Hk=%lld Hv=%lld dk=%lld dv=%lld gated l2 bf16",
                    (long long)B, (long long)T, (long long)Hk, (long long)Hv, (long long)dk, (long long)dv);
      report("delta", shape, ms, flops, bytes);
    }
  }
}

}  // namespace subq::bench::gpu
