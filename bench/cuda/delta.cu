// Gated delta rule at Qwen3-Next-like shapes: dk = dv = 128, 16 key heads with 16 or 32
// value heads, l2-normalised q and k, bf16 in and out, f32 state in and out, B * T = 32K.
// Generalized (DPLR) delta rule at RWKV-7 1.5B's shape: 32 heads of 64.
#include <cmath>
#include <cstdio>
#include <random>

#include "bench/cuda/bench.h"
#include "bench/cuda/timing.h"
#include "src/ops/delta/delta_rule_cuda.h"
#include "src/ops/delta/generalized_delta_rule_cuda.h"

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

// RWKV-7's inputs: kappa a unit vector per (token, head), a = -kappa, b = kappa * eta
// with eta in (0, 1), log_w in [-0.61, 0], so the state stays bounded over 16K tokens.
// FLOPs: 9 dk dv per token and head (u = S^T a and o = S^T q: 2 each; the update
// w S + b u + k v: 5). Bytes: q, k, a, b, v (bf16) and log_w (f32) read once, o (bf16)
// written once, the state read and written.
void bench_dplr(std::mt19937_64& rng) {
  const int64_t dk = 64, dv = 64, H = 32;
  for (auto [B, T] : {std::pair<int64_t, int64_t>{1, 4096}, {8, 4096}, {2, 16384}}) {
    const Shape keys{B, T, H, dk};
    Tensor a_host = Tensor::empty(DType::f32, keys), b_host = Tensor::empty(DType::f32, keys);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::uniform_real_distribution<float> unit(0.f, 1.f);
    float* ap = a_host.mutable_data<float>();
    float* bp = b_host.mutable_data<float>();
    for (int64_t r = 0; r < B * T * H; ++r) {
      double ss = 0;
      for (int64_t d = 0; d < dk; ++d) {
        ap[r * dk + d] = normal(rng);
        ss += static_cast<double>(ap[r * dk + d]) * ap[r * dk + d];
      }
      const auto inv = static_cast<float>(1 / std::sqrt(ss));
      for (int64_t d = 0; d < dk; ++d) {
        const float kappa = ap[r * dk + d] * inv;
        ap[r * dk + d] = -kappa;
        bp[r * dk + d] = kappa * unit(rng);
      }
    }
    const Tensor q = random_device(DType::bf16, keys, rng);
    const Tensor k = uniform_device(DType::bf16, keys, -0.125f, 0.125f, rng);
    const Tensor v = random_device(DType::bf16, {B, T, H, dv}, rng);
    const Tensor a = device_as(a_host, DType::bf16), b = device_as(b_host, DType::bf16);
    const Tensor log_w = uniform_device(DType::f32, keys, -0.61f, 0.f, rng);
    const Tensor state = uniform_device(DType::f32, {B, H, dk, dv}, -0.1f, 0.1f, rng);
    const Tensor o = cuda::empty(DType::bf16, {B, T, H, dv});
    ops::GeneralizedDeltaRuleOptions opt;
    opt.scale = 0.125f;
    const double ms = median_ms([&] { cuda::generalized_delta_rule(q, k, v, a, b, log_w, state, o, opt); });
    cuda::synchronize();
    const double tokens = static_cast<double>(B) * T * H;
    const double bytes = tokens * (2.0 * (4 * dk + 2 * dv) + 4.0 * dk) + 4.0 * 2 * state.numel();
    char shape[120];
    std::snprintf(shape, sizeof shape, "B=%lld T=%lld H=%lld dk=%lld dv=%lld rwkv7 bf16", (long long)B,
                  (long long)T, (long long)H, (long long)dk, (long long)dv);
    report("dplr", shape, ms, 9.0 * tokens * dk * dv, bytes);
  }
}

}  // namespace subq::bench::gpu
