// The dynamic selectors that build their masks on the GPU (MoBA, HiP, XAttention,
// FlexPrefill with its heads' choice and with vertical-slash rows forced by tau = 0)
// against the CPU path they replace (q and k copied to the host, the CPU selector, the
// mask uploaded), then the block-sparse attention over each mask beside dense causal
// attention on the same inputs.
#include <cstdio>
#include <functional>
#include <random>
#include <string>

#include "bench/cuda/bench.h"
#include "bench/cuda/timing.h"
#include "src/ops/attention/flash_attention.h"
#include "src/ops/attention/selectors/dynamic_selectors.h"
#include "src/ops/attention/selectors/dynamic_selectors_cuda.h"
#include "src/ops/common/cuda_ops.h"

namespace subq::bench::gpu {

void bench_selectors(std::mt19937_64& rng) {
  const int64_t H = 32, Hkv = 8, D = 128, blk = 64, top_k = 8;
  const float scale = 0.08838834764f;
  const double threshold = 0.9;
  const int64_t stride = 8;
  struct Selector {
    std::string name;
    std::function<cuda::DeviceBlockMask(const attn::MaskGeometry&, const Tensor&, const Tensor&)> gpu;
    std::function<attn::BlockMask(const attn::MaskGeometry&, const attn::AttentionArgs&)> cpu;
    int64_t cpu_up_to = 131072;  // longer prompts skip the CPU path (minutes per call)
  };
  const Selector selectors[] = {
      {"moba top_k=8", [&](auto& g, auto& q, auto& k) { return cuda::moba_mask(g, q, k, top_k); },
       [&](auto& g, auto& qk) { return attn::moba_mask(g, qk, top_k); }},
      {"hip top_k=8", [&](auto& g, auto& q, auto& k) { return cuda::hip_mask(g, q, k, top_k); },
       [&](auto& g, auto& qk) { return attn::hip_mask(g, qk, top_k); }},
      {"xattention threshold=0.9 stride=8",
       [&](auto& g, auto& q, auto& k) { return cuda::xattention_mask(g, q, k, threshold, stride, scale); },
       [&](auto& g, auto& qk) { return attn::xattention_mask(g, qk, threshold, stride); }, 32768},
      {"flexprefill gamma=0.9 tau=0.1",
       [&](auto& g, auto& q, auto& k) { return cuda::flexprefill_mask(g, q, k, 0.9, 0.1, scale); },
       [&](auto& g, auto& qk) { return attn::flexprefill_mask(g, qk, 0.9, 0.1); }, 32768},
      {"flexprefill gamma=0.9 tau=0",
       [&](auto& g, auto& q, auto& k) { return cuda::flexprefill_mask(g, q, k, 0.9, 0.0, scale); },
       [&](auto& g, auto& qk) { return attn::flexprefill_mask(g, qk, 0.9, 0.0); }, 32768}};
  for (int64_t T : {32768, 131072}) {
    // f32 rotated q and k, as the decoder hands them to a selector; bf16 copies attend.
    const Tensor q32 = random_device(DType::f32, {T, H, D}, rng), k32 = random_device(DType::f32, {T, Hkv, D}, rng);
    const Tensor q = cuda::empty(DType::bf16, {1, T, H, D}), k = cuda::empty(DType::bf16, {1, T, Hkv, D});
    cuda::copy_rows(q32, q.view({T, H, D}));
    cuda::copy_rows(k32, k.view({T, Hkv, D}));
    const Tensor v = random_device(DType::bf16, {1, T, Hkv, D}, rng), o = cuda::empty(DType::bf16, {1, T, H, D});
    const double dense_ms = median_ms([&] { cuda::flash_attention(q, k, v, o, true, scale); });
    const attn::MaskGeometry g{T, T, 0, blk, blk, H, nullptr};
    for (const Selector& sel : selectors) {
      char shape[160];
      std::snprintf(shape, sizeof shape, "T=%lld H=%lld Hkv=%lld D=%lld block=%lld %s", (long long)T, (long long)H,
                    (long long)Hkv, (long long)D, (long long)blk, sel.name.c_str());
      const std::string op = sel.name.substr(0, sel.name.find(' ')) + "_mask";
      cuda::DeviceBlockMask mask;
      const double gpu_ms = median_ms([&] { mask = sel.gpu(g, q32, k32); }, 1, 5);
      const double qk_bytes = static_cast<double>(q32.nbytes() + k32.nbytes());
      report(op.c_str(), std::string(shape) + " on the GPU", gpu_ms, 0, qk_bytes);
      // One call: the slowest CPU paths take half a minute each.
      const double cpu_ms = T > sel.cpu_up_to ? 0 : median_ms(
          [&] {
            const Tensor qh = cuda::to_host(q32), kh = cuda::to_host(k32);
            attn::AttentionArgs qk;
            qk.q = qh.data<float>();
            qk.k = kh.data<float>();
            qk.q_row_stride = H * D;
            qk.k_row_stride = Hkv * D;
            qk.q_batch_stride = T * H * D;
            qk.k_batch_stride = T * Hkv * D;
            qk.q_len = qk.kv_len = T;
            qk.q_heads = H;
            qk.kv_heads = Hkv;
            qk.head_dim = D;
            qk.scale = scale;
            cuda::upload(sel.cpu(g, qk));
          },
          0, 1);
      if (cpu_ms > 0) report(op.c_str(), std::string(shape) + " on the CPU from host copies", cpu_ms, 0, qk_bytes);
      const double ms = median_ms([&] { cuda::flash_attention(q, k, v, o, mask, scale); });
      cuda::synchronize();
      const attn::BlockMask listed = cuda::download(mask);
      report_sparse(std::string("B=1 ") + shape, listed, ms, dense_ms, causal_block_pairs(listed), 1, H, D);
    }
  }
}

}  // namespace subq::bench::gpu
