// subq_cuda_bench: times subq's CUDA kernels on the GPU machine and prints one JSON
// object per line (scripts/gpu-check collects them next to the PyTorch peers' lines,
// measured in the same call). Inputs are random (never zeros); each case checks the
// last launch's error by synchronising.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench/cuda/bench.h"
#include "bench/cuda/timing.h"
#include "src/models/moe_cuda.h"
#include "src/ops/attention/flash_attention.h"
#include "src/ops/attention/selectors/static_selectors.h"
#include "src/ops/common/cuda_ops.h"
#include "src/ops/conv/causal_conv1d_cuda.h"
#include "src/ops/ssm/selective_scan_cuda.h"
#include "subq/ops.h"

namespace subq::bench::gpu {
namespace {

void bench_attention(std::mt19937_64& rng) {
  const int64_t H = 16, D = 128;
  for (int64_t T : {4096, 8192, 16384, 32768, 65536}) {
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
  // Head dims 256 (untuned path: 64 queries per CTA) and 64 (small models' heads).
  struct Other { int64_t B, T, H, D; };
  for (const Other c : {Other{2, 8192, 8, 256}, Other{4, 8192, 16, 64}}) {
    const Tensor q = random_device(DType::bf16, {c.B, c.T, c.H, c.D}, rng);
    const Tensor k = random_device(DType::bf16, {c.B, c.T, c.H, c.D}, rng);
    const Tensor v = random_device(DType::bf16, {c.B, c.T, c.H, c.D}, rng);
    const Tensor o = cuda::empty(DType::bf16, {c.B, c.T, c.H, c.D});
    const float scale = 1.f / std::sqrt(static_cast<float>(c.D));
    const double ms = median_ms([&] { cuda::flash_attention(q, k, v, o, true, scale); });
    cuda::synchronize();
    char shape[128];
    std::snprintf(shape, sizeof shape, "B=%lld T=%lld H=%lld D=%lld causal", (long long)c.B, (long long)c.T,
                  (long long)c.H, (long long)c.D);
    report("attention", shape, ms, 4.0 * c.B * c.H * c.T * c.T * c.D / 2, 4.0 * q.nbytes());
  }
}

// Whether random block pair (qb, kb) is kept, from a hash that bench/gpu/peers.py
// repeats bit for bit, so FlexAttention runs exactly this mask.
bool random_block_kept(int64_t qb, int64_t kb) {
  const uint32_t h = static_cast<uint32_t>(qb) * 2654435761u + static_cast<uint32_t>(kb) * 40503u;
  return kb == qb || kb == 0 || (h >> 7) % 10 == 0;
}

// The key blocks a 64-query row qb of a top-k mask keeps: the diagonal, then the k - 1
// earlier blocks of the smallest hash (MoBA's and HiP's shape: a few scattered blocks).
std::vector<int32_t> top_k_row(int64_t qb, int64_t k) {
  std::vector<std::pair<uint32_t, int32_t>> ranked;
  for (int64_t kb = 0; kb < qb; ++kb)
    ranked.emplace_back(static_cast<uint32_t>(qb) * 2654435761u ^ static_cast<uint32_t>(kb) * 40503u,
                        static_cast<int32_t>(kb));
  const auto keep = std::min<size_t>(ranked.size(), static_cast<size_t>(k - 1));
  std::partial_sort(ranked.begin(), ranked.begin() + static_cast<int64_t>(keep), ranked.end());
  std::vector<int32_t> row{static_cast<int32_t>(qb)};
  for (size_t i = 0; i < keep; ++i) row.push_back(ranked[i].second);
  std::sort(row.begin(), row.end());
  return row;
}

// Block-sparse attention over 128 x 128 blocks (FlexAttention's default), causal, beside
// the dense causal kernel on the same inputs: the speedup over dense against the ideal
// 1 / density. FLOPs counted are the ones the mask keeps (4 D per allowed pair). Two masks
// of 64 x 64 blocks (no FlexAttention peer: its blocks are 128): 8 blocks per row, and
// the window again, whose consecutive rows share most blocks (the sm_80 kernel pairs
// them). Two more show how the mask path's rate grows with row length: every causal
// block listed, and a window of 8192 keys.
void bench_sparse(std::mt19937_64& rng) {
  const int64_t B = 1, H = 16, D = 128, blk = 128;
  for (int64_t T : {8192, 32768}) {
    const Tensor q = random_device(DType::bf16, {B, T, H, D}, rng);
    const Tensor k = random_device(DType::bf16, {B, T, H, D}, rng);
    const Tensor v = random_device(DType::bf16, {B, T, H, D}, rng);
    const Tensor o = cuda::empty(DType::bf16, {B, T, H, D});
    const float scale = 0.08838834764f;
    const double dense_ms = median_ms([&] { cuda::flash_attention(q, k, v, o, true, scale); });
    cuda::synchronize();

    attn::ElementRule causal;
    causal.causal = true;
    attn::BlockMaskBuilder builder(1, 1, T, T, blk, blk, 0, causal);
    for (int64_t qb = 0; qb < T / blk; ++qb) {
      std::vector<int32_t> row;
      for (int64_t kb = 0; kb <= qb; ++kb)
        if (random_block_kept(qb, kb)) row.push_back(static_cast<int32_t>(kb));
      builder.add_row(row);
    }
    attn::BlockMaskBuilder top_k(1, 1, T, T, 64, 64, 0, causal);
    for (int64_t qb = 0; qb < T / 64; ++qb) {
      std::vector<int32_t> row = top_k_row(qb, 8);
      top_k.add_row(row);
    }
    const int64_t window = 2048;
    const attn::BlockMask masks[] = {
        attn::sliding_window_mask(attn::MaskGeometry{T, T, 0, blk, blk, 1, nullptr}, window, 0, true),
        builder.finish(), top_k.finish(),
        attn::sliding_window_mask(attn::MaskGeometry{T, T, 0, 64, 64, 1, nullptr}, window, 0, true),
        attn::dense_mask(T, T, true, 0, blk, blk),
        attn::sliding_window_mask(attn::MaskGeometry{T, T, 0, blk, blk, 1, nullptr}, 8192, 0, true)};
    const char* names[] = {"window=2048",  "random10%",   "top8 of 64-blocks", "window=2048 of 64-blocks",
                           "causal mask", "window=8192"};
    for (int i = 0; i < 6; ++i) {
      const attn::BlockMask& m = masks[i];
      const cuda::DeviceBlockMask dm = cuda::upload(m);
      const double ms = median_ms([&] { cuda::flash_attention(q, k, v, o, dm, scale); });
      cuda::synchronize();
      double pairs = 0;  // allowed (query, key) pairs
      if (i == 0 || i == 3 || i == 5) {
        for (int64_t t = 0; t < T; ++t) pairs += static_cast<double>(std::min(t + 1, i == 5 ? 8192 : window));
      } else {
        pairs = causal_block_pairs(m);
      }
      char shape[160];
      std::snprintf(shape, sizeof shape, "B=%lld T=%lld H=%lld D=%lld %s", (long long)B, (long long)T, (long long)H,
                    (long long)D, names[i]);
      report_sparse(shape, m, ms, dense_ms, pairs, B, H, D);
    }
  }
}

// What a mask row costs beyond its tiles (`subq_cuda_bench rowcost`, not in the default
// run): every row lists the k blocks that end at its diagonal, k = 1 .. 32, at 128- and
// 64-blocks, so that a line through time against tiles separates the per-tile rate
// (slope) from what each row (item) costs on its own (intercept, with the fixed HBM
// traffic of Q, K, V and O).
void bench_row_cost(std::mt19937_64& rng) {
  const int64_t B = 1, H = 16, D = 128;
  for (int64_t T : {8192, 32768}) {
    const Tensor q = random_device(DType::bf16, {B, T, H, D}, rng);
    const Tensor k = random_device(DType::bf16, {B, T, H, D}, rng);
    const Tensor v = random_device(DType::bf16, {B, T, H, D}, rng);
    const Tensor o = cuda::empty(DType::bf16, {B, T, H, D});
    attn::ElementRule causal;
    causal.causal = true;
    for (int64_t blk : {128, 64}) {
      for (int64_t kk : {1, 2, 4, 8, 16, 32}) {
        attn::BlockMaskBuilder builder(1, 1, T, T, blk, blk, 0, causal);
        int64_t tiles = 0;
        for (int64_t qb = 0; qb < T / blk; ++qb) {
          std::vector<int32_t> row;
          for (int64_t kb = std::max<int64_t>(0, qb - kk + 1); kb <= qb; ++kb) row.push_back(static_cast<int32_t>(kb));
          tiles += static_cast<int64_t>(row.size());
          builder.add_row(row);
        }
        const cuda::DeviceBlockMask dm = cuda::upload(builder.finish());
        const double ms = median_ms([&] { cuda::flash_attention(q, k, v, o, dm, 0.08838834764f); });
        cuda::synchronize();
        std::printf("{\"op\": \"row_cost\", \"T\": %lld, \"blk\": %lld, \"k\": %lld, \"items\": %lld, "
                    "\"tiles\": %lld, \"ms\": %.5f}\n",
                    (long long)T, (long long)blk, (long long)kk, (long long)(H * T / blk), (long long)(H * tiles), ms);
        std::fflush(stdout);
      }
    }
  }
}

// Split-KV decode: one query token per sequence against kv_len cached keys; the bytes
// are the K and V cache read once (q and o are negligible).
void bench_decode(std::mt19937_64& rng) {
  struct Case { int64_t B, H, Hkv, D, kv_len; };
  for (const Case c : {Case{1, 32, 8, 128, 8192}, Case{1, 32, 8, 128, 32768}, Case{1, 32, 8, 128, 131072},
                       Case{1, 32, 8, 128, 262144}, Case{8, 32, 8, 128, 32768}, Case{1, 32, 32, 128, 32768},
                       Case{4, 16, 2, 64, 65536}}) {
    const Tensor q = random_device(DType::bf16, {c.B, 1, c.H, c.D}, rng);
    const Tensor k = random_device(DType::bf16, {c.B, c.kv_len, c.Hkv, c.D}, rng);
    const Tensor v = random_device(DType::bf16, {c.B, c.kv_len, c.Hkv, c.D}, rng);
    const Tensor o = cuda::empty(DType::bf16, {c.B, 1, c.H, c.D});
    const double ms = median_ms([&] { cuda::decode_attention(q, k, v, o, c.kv_len, 0.08838834764f); });
    cuda::synchronize();
    char shape[128];
    std::snprintf(shape, sizeof shape, "B=%lld H=%lld Hkv=%lld D=%lld kv=%lld", (long long)c.B, (long long)c.H,
                  (long long)c.Hkv, (long long)c.D, (long long)c.kv_len);
    report("decode_attention", shape, ms, 4.0 * c.B * c.H * c.kv_len * c.D, 2.0 * k.nbytes());
  }
}

// Mamba-1 shapes (d_inner 1536 / 2048 / 4096, N = 16). Bytes: x, dt, z in, y out, B and C.
void bench_scan(std::mt19937_64& rng) {
  struct Shape3 { int64_t B, T, D; };
  for (const Shape3 c : {Shape3{1, 4096, 1536}, Shape3{1, 8192, 2048}, Shape3{8, 4096, 1536}, Shape3{4, 4096, 4096}}) {
    const int64_t N = 16;
    cuda::SelectiveScanInputs in;
    in.x = random_device(DType::f32, {c.B, c.T, c.D}, rng);
    in.dt = random_device(DType::f32, {c.B, c.T, c.D}, rng);
    in.z = random_device(DType::f32, {c.B, c.T, c.D}, rng);
    in.A = random_device(DType::f32, {c.D, N}, rng);
    in.B = random_device(DType::f32, {c.B, c.T, 1, N}, rng);
    in.C = random_device(DType::f32, {c.B, c.T, 1, N}, rng);
    in.D = random_device(DType::f32, {c.D}, rng);
    in.dt_bias = random_device(DType::f32, {c.D}, rng);
    const Tensor state = random_device(DType::f32, {c.B, c.D, N}, rng);
    const Tensor y = cuda::empty(DType::f32, {c.B, c.T, c.D});
    const double ms = median_ms([&] { cuda::selective_scan(in, state, y); });
    cuda::synchronize();
    char shape[128];
    std::snprintf(shape, sizeof shape, "B=%lld T=%lld D=%lld N=%lld G=1 f32", (long long)c.B, (long long)c.T,
                  (long long)c.D, (long long)N);
    report("selective_scan", shape, ms, 0, 4.0 * c.B * c.T * (4 * c.D + 2 * N));
  }
  for (const Shape3 c : {Shape3{1, 8192, 3072}, Shape3{8, 4096, 4096}}) {
    const int64_t W = 4;
    const Tensor x = random_device(DType::f32, {c.B, c.T, c.D}, rng);
    const Tensor w = random_device(DType::f32, {c.D, W}, rng);
    const Tensor bias = random_device(DType::f32, {c.D}, rng);
    const Tensor y = cuda::empty(DType::f32, {c.B, c.T, c.D});
    const double ms = median_ms([&] { cuda::causal_conv1d(x, w, bias, true, Tensor{}, y); });
    cuda::synchronize();
    char shape[128];
    std::snprintf(shape, sizeof shape, "B=%lld T=%lld D=%lld W=%lld silu f32", (long long)c.B, (long long)c.T,
                  (long long)c.D, (long long)W);
    report("causal_conv1d", shape, ms, 0, 8.0 * c.B * c.T * c.D);
  }
}

// linear() through cuBLAS: a square product (the matmul ceiling's shape) and a decode-
// and a prefill-sized projection with bf16 weights and f32 output.
void bench_gemm(std::mt19937_64& rng) {
  struct Mnk { int64_t M, N, K; };
  for (const Mnk c : {Mnk{8192, 8192, 8192}, Mnk{4096, 4096, 4096}, Mnk{2048, 14336, 4096}, Mnk{1, 4096, 4096}}) {
    const Tensor x = random_device(DType::bf16, {c.M, c.K}, rng);
    const Tensor w = random_device(DType::bf16, {c.N, c.K}, rng);
    const Tensor y = cuda::empty(DType::f32, {c.M, c.N});
    const double ms = median_ms([&] { cuda::linear(x, w, Tensor{}, y); });
    cuda::synchronize();
    char shape[128];
    std::snprintf(shape, sizeof shape, "M=%lld N=%lld K=%lld bf16->f32", (long long)c.M, (long long)c.N, (long long)c.K);
    report("linear", shape, ms, 2.0 * c.M * c.N * c.K, 2.0 * (c.M * c.K + c.N * c.K) + 4.0 * c.M * c.N);
  }
}

// A mixture of experts' decode step: one token's top-2 of Jamba-v0.1's experts (hidden
// 4096, width 14336), the stacked gate/up product then the down product, against the
// bytes of the two experts' weights it must read. Four experts are stacked (the kernel
// reads only the chosen ones); cuBLAS's M = 1 product on one expert's gate/up beside it.
void bench_moe(std::mt19937_64& rng) {
  const int64_t E = 4, D = 4096, F = 14336;
  const Tensor first = uniform_device(DType::bf16, {E, 2 * F, D}, -0.05f, 0.05f, rng);
  const Tensor down = uniform_device(DType::bf16, {E, D, F}, -0.05f, 0.05f, rng);
  const Tensor x = random_device(DType::bf16, {1, D}, rng);
  const Tensor act = random_device(DType::bf16, {2, F}, rng);
  Tensor ids_host = Tensor::empty(DType::i32, {1, 2});
  ids_host.mutable_data<int32_t>()[0] = 1;
  ids_host.mutable_data<int32_t>()[1] = 3;
  const Tensor ids = cuda::to_device(ids_host);
  const Tensor h = cuda::empty(DType::f32, {2, 2 * F}), y = cuda::empty(DType::f32, {2, D});
  const double first_ms = median_ms([&] { cuda::expert_linear(x, ids, first, Tensor{}, h); });
  report("moe_gemv", "gate/up top-2 of E=4 D=4096 2F=28672 bf16", first_ms, 2.0 * 2 * 2 * F * D, 2.0 * 2 * 2 * F * D);
  const double down_ms = median_ms([&] { cuda::expert_linear(act, ids, down, Tensor{}, y); });
  report("moe_gemv", "down top-2 of E=4 F=14336 D=4096 bf16", down_ms, 2.0 * 2 * D * F, 2.0 * 2 * D * F);
  const Tensor one = first.select(0, 1), out = cuda::empty(DType::f32, {1, 2 * F});
  const double cublas_ms = median_ms([&] { cuda::linear(x, one, Tensor{}, out); });
  report("moe_gemv", "cuBLAS M=1 one expert's gate/up D=4096 2F=28672 bf16", cublas_ms, 2.0 * 2 * F * D, 2.0 * 2 * F * D);
  cuda::synchronize();
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
    if (only.empty() || only == "sparse") bench_sparse(rng);
    if (only == "rowcost") bench_row_cost(rng);
    if (only.empty() || only == "selectors") bench_selectors(rng);
    if (only.empty() || only == "decode") bench_decode(rng);
    if (only.empty() || only == "scan") bench_scan(rng);
    if (only.empty() || only == "gemm") bench_gemm(rng);
    if (only.empty() || only == "moe") bench_moe(rng);
    if (only.empty() || only == "linear") bench_linear(rng);
    if (only.empty() || only == "delta") bench_delta(rng);
    if (only.empty() || only == "dplr") bench_dplr(rng);
    // Whole models need the checkpoints peers.py writes: `subq_cuda_bench models DIR`.
    if (only == "models") bench_models(argc > 2 ? argv[2] : "/tmp/subq-bench-models");
  } catch (const subq::Error& e) {
    std::fprintf(stderr, "subq_cuda_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
