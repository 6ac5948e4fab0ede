// Split-KV decode (FlashDecoding): one query token per sequence against a long KV cache.
// The work is the bytes of K and V, so the kernel is laid out for bandwidth: a CTA takes
// one (key range, kv head, batch) and serves every query head that shares the kv head
// (GQA), so each cache byte is read once. Inside the CTA a key is read by D/8 lanes, 16
// bytes each (one coalesced row), and each thread keeps four keys' loads in flight
// before it uses them. Each lane group runs its own online softmax; the CTA merges its
// groups in shared memory and writes an unnormalised partial (sum, max, output) per
// split, which a second kernel merges by log-sum-exp.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/core/cuda/mma.cuh"
#include "src/ops/attention/flash_attention.h"

namespace subq::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kUnroll = 4;       // keys per lane group in flight
constexpr int kMaxHeadsPerCta = 8;

struct DecodeParams {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  float* part_acc;  // [B, H, splits, D]
  float* part_max;  // [B, H, splits], log2 domain
  float* part_sum;  // [B, H, splits]
  int heads, kv_heads, group, kv_len, capacity, split_len, splits;
  float scale_log2;
};

__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __bfloat1622float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

// Grid (splits, kv_heads * head_chunks, B). kHeads query heads per CTA (the group's
// heads h0 .. h0 + kHeads - 1 of kv head kvh; those >= group are computed and dropped).
template <int D, int kHeads>
__global__ void __launch_bounds__(kThreads) decode_split_kernel(const DecodeParams p) {
  constexpr int kLanes = D / 8;                 // lanes reading one key row
  constexpr int kGroups = kThreads / kLanes;    // key groups per CTA
  __shared__ float s_acc[kGroups][kHeads][D];
  __shared__ float s_max[kGroups][kHeads];
  __shared__ float s_sum[kGroups][kHeads];

  const int chunks = (p.group + kHeads - 1) / kHeads;
  const int split = blockIdx.x, kvh = blockIdx.y / chunks, h0 = kvh * p.group + (blockIdx.y % chunks) * kHeads;
  const int b = blockIdx.z;
  const int gid = threadIdx.x / kLanes, sub = threadIdx.x % kLanes;
  const int heads_here = min(kHeads, kvh * p.group + p.group - h0);

  float qf[kHeads][8];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    const int h = h0 + min(g, heads_here - 1);
    const uint4 u = *reinterpret_cast<const uint4*>(p.q + (static_cast<int64_t>(b) * p.heads + h) * D + sub * 8);
    unpack8(u, qf[g]);
#pragma unroll
    for (int i = 0; i < 8; ++i) qf[g][i] *= p.scale_log2;
  }

  float acc[kHeads][8], run_max[kHeads], run_sum[kHeads];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    run_max[g] = -INFINITY;
    run_sum[g] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
  }

  const int64_t ld = static_cast<int64_t>(p.kv_heads) * D;
  const __nv_bfloat16* kbase = p.k + (static_cast<int64_t>(b) * p.capacity) * ld + kvh * D + sub * 8;
  const __nv_bfloat16* vbase = p.v + (static_cast<int64_t>(b) * p.capacity) * ld + kvh * D + sub * 8;
  const int begin = split * p.split_len, end = min(p.kv_len, begin + p.split_len);

  // The trip count is the same for every lane: the shuffles below need the whole warp.
  for (int base_t = begin; base_t < end; base_t += kGroups * kUnroll) {
    const int t0 = base_t + gid;
    uint4 kr[kUnroll], vr[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = min(t0 + u * kGroups, end - 1);  // clamped rows are loaded, then dropped
      kr[u] = __ldg(reinterpret_cast<const uint4*>(kbase + t * ld));
      vr[u] = __ldg(reinterpret_cast<const uint4*>(vbase + t * ld));
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const bool valid = t0 + u * kGroups < end;
      float kf[8], vf[8];
      unpack8(kr[u], kf);
      unpack8(vr[u], vf);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s = fmaf(qf[g][i], kf[i], s);
#pragma unroll
        for (int off = kLanes / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        s = valid ? s : -INFINITY;
        const float new_max = fmaxf(run_max[g], s);
        const float base = new_max == -INFINITY ? 0.f : new_max;
        const float corr = fast_exp2(run_max[g] - base), w = fast_exp2(s - base);
        run_max[g] = new_max;
        run_sum[g] = fmaf(run_sum[g], corr, w);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(acc[g][i], corr, w * vf[i]);
      }
    }
  }

#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
#pragma unroll
    for (int i = 0; i < 8; ++i) s_acc[gid][g][sub * 8 + i] = acc[g][i];
    if (sub == 0) {
      s_max[gid][g] = run_max[g];
      s_sum[gid][g] = run_sum[g];
    }
  }
  __syncthreads();

  for (int e = threadIdx.x; e < heads_here * D; e += kThreads) {
    const int g = e / D, d = e % D;
    float m = -INFINITY;
    for (int i = 0; i < kGroups; ++i) m = fmaxf(m, s_max[i][g]);
    const float base = m == -INFINITY ? 0.f : m;
    float a = 0.f, l = 0.f;
    for (int i = 0; i < kGroups; ++i) {
      const float w = fast_exp2(s_max[i][g] - base);
      a = fmaf(w, s_acc[i][g][d], a);
      l = fmaf(w, s_sum[i][g], l);
    }
    const int64_t row = (static_cast<int64_t>(b) * p.heads + h0 + g) * p.splits + split;
    p.part_acc[row * D + d] = a;
    if (d == 0) {
      p.part_max[row] = m;
      p.part_sum[row] = l;
    }
  }
}

// Grid (H, B), D threads: o = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s.
template <int D>
__global__ void __launch_bounds__(D) decode_merge_kernel(const DecodeParams p, __nv_bfloat16* o) {
  const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
  const int64_t row0 = (static_cast<int64_t>(b) * p.heads + h) * p.splits;
  float m = -INFINITY;
  for (int s = 0; s < p.splits; ++s) m = fmaxf(m, p.part_max[row0 + s]);
  const float base = m == -INFINITY ? 0.f : m;
  float a = 0.f, l = 0.f;
  for (int s = 0; s < p.splits; ++s) {
    const float w = fast_exp2(p.part_max[row0 + s] - base);
    a = fmaf(w, p.part_acc[(row0 + s) * D + d], a);
    l = fmaf(w, p.part_sum[row0 + s], l);
  }
  o[(static_cast<int64_t>(b) * p.heads + h) * D + d] = __float2bfloat16_rn(l > 0.f ? a / l : 0.f);
}

template <int D, int kHeads>
void launch(const DecodeParams& p, int batch, __nv_bfloat16* o) {
  const int chunks = (p.group + kHeads - 1) / kHeads;
  const dim3 grid(p.splits, p.kv_heads * chunks, batch);
  decode_split_kernel<D, kHeads><<<grid, kThreads, 0, stream()>>>(p);
  SUBQ_CUDA_CHECK_LAUNCH("decode_split_kernel");
  decode_merge_kernel<D><<<dim3(p.heads, batch), D, 0, stream()>>>(p, o);
  SUBQ_CUDA_CHECK_LAUNCH("decode_merge_kernel");
}

template <int D>
void launch_heads(const DecodeParams& p, int batch, __nv_bfloat16* o) {
  // The smallest head count per CTA that covers the group (two CTAs for groups > 8).
  if (p.group == 1) launch<D, 1>(p, batch, o);
  else if (p.group == 2) launch<D, 2>(p, batch, o);
  else if (p.group <= 4) launch<D, 4>(p, batch, o);
  else launch<D, kMaxHeadsPerCta>(p, batch, o);
}

void check_decode_tensor(const Tensor& t, const char* what) {
  check_device(t, Device::cuda, what);
  check_dtype(t, DType::bf16, what);
  check_contiguous(t, what);
  if (t.ndim() != 4) throw Error(std::string(what) + ": expected 4 dimensions [B, T, H, D], found " + t.str());
}

}  // namespace

void decode_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, int64_t kv_len,
                      float scale, int64_t splits) {
  check_decode_tensor(q, "decode_attention q");
  check_decode_tensor(k, "decode_attention k");
  check_decode_tensor(v, "decode_attention v");
  check_decode_tensor(o, "decode_attention o");
  const int64_t B = q.dim(0), H = q.dim(2), D = q.dim(3), capacity = k.dim(1), Hkv = k.dim(2);
  if (q.dim(1) != 1) throw Error("decode_attention q: expected one query token [B, 1, H, D], found " + q.str());
  if (D != 64 && D != 128 && D != 256)
    throw Error("decode_attention q: head dim must be 64, 128 or 256, found " + q.str());
  check_shape(k, Shape{B, capacity, Hkv, D}, "decode_attention k");
  check_shape(v, Shape{B, capacity, Hkv, D}, "decode_attention v");
  check_shape(o, q.shape(), "decode_attention o");
  if (Hkv == 0 || H % Hkv != 0 || H / Hkv > 2 * kMaxHeadsPerCta)
    throw Error("decode_attention: query heads (" + std::to_string(H) + ") must be a multiple of kv heads (" +
                std::to_string(Hkv) + "), at most " + std::to_string(2 * kMaxHeadsPerCta) + " per kv head");
  if (kv_len < 1 || kv_len > capacity)
    throw Error("decode_attention: kv_len must be in [1, " + std::to_string(capacity) + "] (the cache k " +
                k.str() + "), found " + std::to_string(kv_len));
  if (capacity > (int64_t{1} << 30) || B > 65535 || Hkv * 2 > 65535)
    throw Error("decode_attention: sizes exceed the kernel's grid limits: k " + k.str());
  if (!(scale > 0.f) || !std::isfinite(scale))
    throw Error("decode_attention: scale must be positive and finite, found " + std::to_string(scale));
  if (B == 0) return;

  // Enough CTAs for about four per multiprocessor, each split at least 256 keys.
  const int64_t group = H / Hkv;
  const int64_t chunks = (group + kMaxHeadsPerCta - 1) / kMaxHeadsPerCta;
  const int64_t ctas_per_split = B * Hkv * chunks;
  if (splits <= 0) {
    const int64_t want = (4 * device_info().multiprocessors + ctas_per_split - 1) / ctas_per_split;
    splits = std::clamp<int64_t>(want, 1, (kv_len + 255) / 256);
  }
  splits = std::clamp<int64_t>(splits, 1, std::min<int64_t>(kv_len, 65535));
  const int64_t split_len = (kv_len + splits - 1) / splits;
  splits = (kv_len + split_len - 1) / split_len;

  const int64_t rows = B * H * splits;
  float* scratch = static_cast<float*>(device_alloc(static_cast<size_t>(rows * (D + 2)) * sizeof(float)));
  DecodeParams p{};
  p.q = reinterpret_cast<const __nv_bfloat16*>(q.device_data<bf16>());
  p.k = reinterpret_cast<const __nv_bfloat16*>(k.device_data<bf16>());
  p.v = reinterpret_cast<const __nv_bfloat16*>(v.device_data<bf16>());
  p.part_acc = scratch;
  p.part_max = scratch + rows * D;
  p.part_sum = p.part_max + rows;
  p.heads = static_cast<int>(H);
  p.kv_heads = static_cast<int>(Hkv);
  p.group = static_cast<int>(group);
  p.kv_len = static_cast<int>(kv_len);
  p.capacity = static_cast<int>(capacity);
  p.split_len = static_cast<int>(split_len);
  p.splits = static_cast<int>(splits);
  p.scale_log2 = scale * 1.4426950408889634f;
  auto* out = reinterpret_cast<__nv_bfloat16*>(o.mutable_device_data<bf16>());
  const int batch = static_cast<int>(B);
  try {
    if (D == 64) launch_heads<64>(p, batch, out);
    else if (D == 128) launch_heads<128>(p, batch, out);
    else launch_heads<256>(p, batch, out);
  } catch (...) {
    device_free(scratch);
    throw;
  }
  // The caching allocator hands this block out again only to later work on the same
  // stream, so freeing it before the kernels finish is safe.
  device_free(scratch);
}

}  // namespace subq::cuda
