// Split-KV decode (FlashDecoding): one query token per sequence against a long KV cache.
// The work is the bytes of K and V, so the kernel is laid out for bandwidth, and the
// arithmetic goes to the tensor cores so that the issue slots never become the limit (a
// CUDA-core version spent ~50 warp instructions per key at GQA group 4 and reached half
// the copy bandwidth). A CTA takes one (key range, kv head, batch) and serves every query
// head that shares the kv head: the group's query rows, zero-padded to 16, are the A
// operand of mma.m16n8k16, so each cache byte is read once. K/V tiles of 64 keys stream
// through a ring of cp.async stages; each of the 4 warps takes 16 keys of a tile with its
// own online softmax, the CTA merges its warps in shared memory and writes an
// unnormalised partial (sum, max, output) per split, which a second kernel merges by
// log-sum-exp.
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
constexpr int kTileKeys = 64;          // keys per stage; 16 per warp
constexpr int kRows = 16;              // query rows of the mma: the group, zero-padded
constexpr int kMaxGroup = kRows;

// Stages of the K/V ring: about 96 KB of copies in flight per CTA (64 KB at D = 256).
template <int D>
constexpr int kStages = std::max(2, 96 * 1024 / (2 * kTileKeys * D * 2));

template <int D>
constexpr int kSmemBytes = (kRows * D + kStages<D> * 2 * kTileKeys * D) * 2;
// The warps' partials are merged in the stages' space once the keys are done.
static_assert(kWarps * kRows * (64 + 2) * 4 <= kStages<64> * 2 * kTileKeys * 64 * 2);
static_assert(kWarps * kRows * (128 + 2) * 4 <= kStages<128> * 2 * kTileKeys * 128 * 2);
static_assert(kWarps * kRows * (256 + 2) * 4 <= kStages<256> * 2 * kTileKeys * 256 * 2);

struct DecodeParams {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  float* part_acc;  // [B, H, splits, D]
  float* part_max;  // [B, H, splits], log2 domain
  float* part_sum;  // [B, H, splits]
  const int* kv_len_device;  // when set, the length is read here when the kernel runs
  int heads, kv_heads, group, kv_len, capacity, split_len, splits;
  float scale_log2;
};

// load_tile (mma.cuh) as a loop: its fully unrolled form costs this kernel registers
// (a spill at D = 256, measured with ptxas), and the copies are not its bottleneck.
template <int R, int D>
__device__ __forceinline__ void load_rows(__nv_bfloat16* s, const __nv_bfloat16* g, int64_t ld, int valid,
                                          const __nv_bfloat16* safe) {
  constexpr int kChunks = D / 8;
  for (int idx = threadIdx.x; idx < R * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const bool ok = r < valid;
    cp_async_16(s + swz<D>(r, c), ok ? g + r * ld + c * 8 : safe, ok);
  }
}

// Grid (splits, kv_heads, B).
template <int D>
__global__ void __launch_bounds__(kThreads) decode_split_kernel(const DecodeParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  auto* sQ = reinterpret_cast<__nv_bfloat16*>(smem);
  auto* sKV = sQ + kRows * D;  // stage s: K at sKV + 2 s T D, V right after it
  constexpr int kStage = 2 * kTileKeys * D;

  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int h0 = kvh * p.group;
  const int kv_len = p.kv_len_device ? min(*p.kv_len_device, p.capacity) : p.kv_len;
  const int begin = split * p.split_len, end = min(kv_len, begin + p.split_len);  // may be empty
  const int n_tiles = (end - begin + kTileKeys - 1) / kTileKeys;

  const int64_t ld = static_cast<int64_t>(p.kv_heads) * D;
  const __nv_bfloat16* kbase = p.k + static_cast<int64_t>(b) * p.capacity * ld + kvh * D;
  const __nv_bfloat16* vbase = p.v + static_cast<int64_t>(b) * p.capacity * ld + kvh * D;
  const auto load_stage = [&](int j) {
    const int key0 = begin + j * kTileKeys;
    __nv_bfloat16* st = sKV + (j % kStages<D>) * kStage;
    load_rows<kTileKeys, D>(st, kbase + key0 * ld, ld, end - key0, kbase);
    load_rows<kTileKeys, D>(st + kTileKeys * D, vbase + key0 * ld, ld, end - key0, vbase);
  };

  load_rows<kRows, D>(sQ, p.q + (static_cast<int64_t>(b) * p.heads + h0) * D, D, p.group, p.q);
  cp_async_commit();
#pragma unroll
  for (int s = 0; s < kStages<D> - 1; ++s) {
    if (s < n_tiles) load_stage(s);
    cp_async_commit();  // empty groups keep the wait counts below uniform
  }

  cp_async_wait<kStages<D> - 1>();  // Q has landed
  __syncthreads();
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qa[kk], sQ + swz<D>(lane & 15, kk * 2 + (lane >> 4)));

  float acc[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[dt][c] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  for (int j = 0; j < n_tiles; ++j) {
    cp_async_wait<kStages<D> - 2>();
    __syncthreads();  // tile j is visible, and every warp is done with tile j - 1's stage
    if (j + kStages<D> - 1 < n_tiles) load_stage(j + kStages<D> - 1);
    cp_async_commit();

    const __nv_bfloat16* k_s = sKV + (j % kStages<D>) * kStage;
    const __nv_bfloat16* v_s = k_s + kTileKeys * D;
    const int w0 = warp * 16;  // this warp's keys within the tile

    float s[2][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t kb[4];
      ldmatrix_x4(kb, k_s + swz<D>(w0 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
      mma_bf16_16816(s[0], qa[kk], kb[0], kb[1]);
      mma_bf16_16816(s[1], qa[kk], kb[2], kb[3]);
    }
    const int key0 = begin + j * kTileKeys + w0;
    if (key0 + 16 > end) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c)
          if (key0 + nt * 8 + ((lane & 3) << 1) + (c & 1) >= end) s[nt][c] = -INFINITY;
    }

    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = fmaxf(fmaxf(s[0][2 * r], s[0][2 * r + 1]), fmaxf(s[1][2 * r], s[1][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float new_max = fmaxf(row_max[r], mx * p.scale_log2);
      // A warp whose keys are all past `end` keeps max -inf; exp2 then gives zeros, not NaN.
      const float base = new_max == -INFINITY ? 0.f : new_max;
      corr[r] = fast_exp2(row_max[r] - base);
      row_max[r] = new_max;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int c = 2 * r; c < 2 * r + 2; ++c) {
          s[nt][c] = fast_exp2(fmaf(s[nt][c], p.scale_log2, -base));
          sum += s[nt][c];
        }
      row_sum[r] = row_sum[r] * corr[r] + sum;
    }

    uint32_t pa[4];
    pa[0] = pack_bf16x2(s[0][0], s[0][1]);
    pa[1] = pack_bf16x2(s[0][2], s[0][3]);
    pa[2] = pack_bf16x2(s[1][0], s[1][1]);
    pa[3] = pack_bf16x2(s[1][2], s[1][3]);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, v_s + swz<D>(w0 + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4)));
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        acc[2 * dp][c] *= corr[c >> 1];
        acc[2 * dp + 1][c] *= corr[c >> 1];
      }
      mma_bf16_16816(acc[2 * dp], pa, vb[0], vb[1]);
      mma_bf16_16816(acc[2 * dp + 1], pa, vb[2], vb[3]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stages are free: reuse them to merge the warps

  auto* m_acc = reinterpret_cast<float*>(sKV);  // [kWarps][kRows][D]
  float* m_max = m_acc + kWarps * kRows * D;     // [kWarps][kRows]
  float* m_sum = m_max + kWarps * kRows;         // [kWarps][kRows]
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = (lane >> 2) + 8 * r;
    if ((lane & 3) == 0) {
      m_max[warp * kRows + row] = row_max[r];
      m_sum[warp * kRows + row] = sum;
    }
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const int col = dt * 8 + ((lane & 3) << 1);
      m_acc[(warp * kRows + row) * D + col] = acc[dt][2 * r];
      m_acc[(warp * kRows + row) * D + col + 1] = acc[dt][2 * r + 1];
    }
  }
  __syncthreads();

  for (int e = threadIdx.x; e < p.group * D; e += kThreads) {
    const int row = e / D, d = e % D;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, m_max[w * kRows + row]);
    const float base = m == -INFINITY ? 0.f : m;
    float a = 0.f, l = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wt = fast_exp2(m_max[w * kRows + row] - base);
      a = fmaf(wt, m_acc[(w * kRows + row) * D + d], a);
      l = fmaf(wt, m_sum[w * kRows + row], l);
    }
    const int64_t out = (static_cast<int64_t>(b) * p.heads + h0 + row) * p.splits + split;
    p.part_acc[out * D + d] = a;
    if (d == 0) {
      p.part_max[out] = m;
      p.part_sum[out] = l;
    }
  }
}

// Grid (H, B), D threads: o = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s. The
// splits are read with eight loads in flight per thread (there can be hundreds).
template <int D>
__global__ void __launch_bounds__(D) decode_merge_kernel(const DecodeParams p, __nv_bfloat16* o) {
  __shared__ float s_max[D / 32];
  const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
  const int64_t row0 = (static_cast<int64_t>(b) * p.heads + h) * p.splits;
  const float* __restrict__ pmax = p.part_max + row0;
  const float* __restrict__ psum = p.part_sum + row0;
  const float* __restrict__ pacc = p.part_acc + row0 * D + d;
  float m = -INFINITY;
  for (int s = d; s < p.splits; s += D) m = fmaxf(m, pmax[s]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if ((d & 31) == 0) s_max[d >> 5] = m;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < D / 32; ++w) m = fmaxf(m, s_max[w]);
  const float base = m == -INFINITY ? 0.f : m;
  float a = 0.f, l = 0.f;
#pragma unroll 8
  for (int s = 0; s < p.splits; ++s) {
    const float w = fast_exp2(pmax[s] - base);
    a = fmaf(w, pacc[static_cast<int64_t>(s) * D], a);
    l = fmaf(w, psum[s], l);
  }
  o[(static_cast<int64_t>(b) * p.heads + h) * D + d] = __float2bfloat16_rn(l > 0.f ? a / l : 0.f);
}

void check_decode_tensor(const Tensor& t, const char* what) {
  check_device(t, Device::cuda, what);
  check_dtype(t, DType::bf16, what);
  check_contiguous(t, what);
  if (t.ndim() != 4) throw Error(std::string(what) + ": expected 4 dimensions [B, T, H, D], found " + t.str());
}

// Splits the keys so that the grid is one full wave of resident CTAs (a second, partial
// wave would leave most of the GPU idle while it runs), each split a whole number of
// 64-key tiles; `splits` > 0 asks for that many instead.
template <int D>
void launch(DecodeParams& p, int64_t batch, int64_t splits, __nv_bfloat16* o) {
  static const int resident = [] {
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(decode_split_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         kSmemBytes<D>));
    int n = 0;
    SUBQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_split_kernel<D>, kThreads,
                                                                  kSmemBytes<D>));
    return std::max(n, 1);
  }();
  const int64_t tiles = (p.kv_len + kTileKeys - 1) / kTileKeys;
  if (splits <= 0) splits = std::max<int64_t>(1, resident * device_info().multiprocessors / (batch * p.kv_heads));
  splits = std::clamp<int64_t>(splits, 1, std::min<int64_t>(tiles, 65535));
  const int64_t split_len = (tiles + splits - 1) / splits * kTileKeys;
  splits = (p.kv_len + split_len - 1) / split_len;

  const int64_t rows = batch * p.heads * splits;
  float* scratch = static_cast<float*>(device_alloc(static_cast<size_t>(rows * (D + 2)) * sizeof(float)));
  p.part_acc = scratch;
  p.part_max = scratch + rows * D;
  p.part_sum = p.part_max + rows;
  p.split_len = static_cast<int>(split_len);
  p.splits = static_cast<int>(splits);
  try {
    decode_split_kernel<D><<<dim3(p.splits, p.kv_heads, batch), kThreads, kSmemBytes<D>, stream()>>>(p);
    SUBQ_CUDA_CHECK_LAUNCH("decode_split_kernel");
    decode_merge_kernel<D><<<dim3(p.heads, batch), D, 0, stream()>>>(p, o);
    SUBQ_CUDA_CHECK_LAUNCH("decode_merge_kernel");
  } catch (...) {
    device_free(scratch);
    throw;
  }
  // The caching allocator hands this block out again only to later work on the same
  // stream, so freeing it before the kernels finish is safe.
  device_free(scratch);
}

}  // namespace

namespace {

// kv_len_device null: the length is kv_len; else it is read on the GPU and kv_len is the
// capacity the keys are split for.
void run_decode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, int64_t kv_len,
                const int* kv_len_device, float scale, int64_t splits) {
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
  if (Hkv == 0 || H % Hkv != 0 || H / Hkv > kMaxGroup)
    throw Error("decode_attention: query heads (" + std::to_string(H) + ") must be a multiple of kv heads (" +
                std::to_string(Hkv) + "), at most " + std::to_string(kMaxGroup) + " per kv head");
  if (kv_len < 1 || kv_len > capacity)
    throw Error("decode_attention: kv_len must be in [1, " + std::to_string(capacity) + "] (the cache k " +
                k.str() + "), found " + std::to_string(kv_len));
  if (capacity > (int64_t{1} << 30) || B > 65535 || Hkv > 65535)
    throw Error("decode_attention: sizes exceed the kernel's grid limits: k " + k.str());
  if (!(scale > 0.f) || !std::isfinite(scale))
    throw Error("decode_attention: scale must be positive and finite, found " + std::to_string(scale));
  if (B == 0) return;

  DecodeParams p{};
  p.q = reinterpret_cast<const __nv_bfloat16*>(q.device_data<bf16>());
  p.k = reinterpret_cast<const __nv_bfloat16*>(k.device_data<bf16>());
  p.v = reinterpret_cast<const __nv_bfloat16*>(v.device_data<bf16>());
  p.heads = static_cast<int>(H);
  p.kv_heads = static_cast<int>(Hkv);
  p.group = static_cast<int>(H / Hkv);
  p.kv_len = static_cast<int>(kv_len);
  p.kv_len_device = kv_len_device;
  p.capacity = static_cast<int>(capacity);
  p.scale_log2 = scale * 1.4426950408889634f;
  auto* out = reinterpret_cast<__nv_bfloat16*>(o.mutable_device_data<bf16>());
  if (D == 64) launch<64>(p, B, splits, out);
  else if (D == 128) launch<128>(p, B, splits, out);
  else launch<256>(p, B, splits, out);
}

}  // namespace

void decode_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, int64_t kv_len,
                      float scale, int64_t splits) {
  run_decode(q, k, v, o, kv_len, nullptr, scale, splits);
}

void decode_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& kv_len,
                      float scale) {
  check_device(kv_len, Device::cuda, "decode_attention kv_len");
  check_dtype(kv_len, DType::i32, "decode_attention kv_len");
  check_shape(kv_len, Shape{1}, "decode_attention kv_len");
  run_decode(q, k, v, o, k.ndim() == 4 ? k.dim(1) : 0, kv_len.device_data<int32_t>(), scale, 0);
}

namespace {

__global__ void kv_append_kernel(const float* src, int64_t token_stride, int64_t head_stride, int64_t T, int64_t H,
                                 int64_t Dh, __nv_bfloat16* cache, int64_t Dp, int64_t capacity, const int* position,
                                 KvRing ring) {
  const int64_t pos = *position;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < T * H * Dp;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / (H * Dp), h = i / Dp % H, j = i % Dp, p = pos + t;
    const int64_t slot = ring.window == 0 || p < ring.sinks ? p : ring.sinks + (p - ring.sinks) % ring.window;
    if (slot < 0 || slot >= capacity) continue;  // the caller reserved room; never write outside it
    cache[(slot * H + h) * Dp + j] =
        __float2bfloat16_rn(j < Dh ? src[t * token_stride + h * head_stride + j] : 0.f);
  }
}

}  // namespace

void kv_append(const Tensor& src, const Tensor& cache, const Tensor& position, const KvRing& ring) {
  check_device(src, Device::cuda, "kv_append src");
  check_dtype(src, DType::f32, "kv_append src");
  if (src.ndim() != 3 || (src.dim(2) > 1 && src.stride(2) != 1))
    throw Error("kv_append src: expected [T, Hkv, Dh] with unit element stride, found " + src.str());
  check_device(cache, Device::cuda, "kv_append cache");
  check_dtype(cache, DType::bf16, "kv_append cache");
  check_contiguous(cache, "kv_append cache");
  if (cache.ndim() != 3 || cache.dim(1) != src.dim(1) || cache.dim(2) < src.dim(2))
    throw Error("kv_append cache: expected [capacity, " + std::to_string(src.dim(1)) + ", >= " +
                std::to_string(src.dim(2)) + "], found " + cache.str());
  check_device(position, Device::cuda, "kv_append position");
  check_dtype(position, DType::i32, "kv_append position");
  check_shape(position, Shape{1}, "kv_append position");
  const int64_t T = src.dim(0), H = src.dim(1), Dh = src.dim(2), Dp = cache.dim(2), n = T * H * Dp;
  if (ring.window < 0 || ring.sinks < 0 || (ring.window > 0 && T > ring.window))
    throw Error("kv_append: a ring of " + std::to_string(ring.sinks) + " sinks and window " +
                std::to_string(ring.window) + " cannot take " + std::to_string(T) + " tokens at once");
  if (n == 0) return;
  kv_append_kernel<<<static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096)), 256, 0, stream()>>>(
      src.device_data<float>(), src.stride(0), src.stride(1), T, H, Dh,
      reinterpret_cast<__nv_bfloat16*>(cache.mutable_device_data<bf16>()), Dp, cache.dim(0),
      position.device_data<int32_t>(), ring);
  SUBQ_CUDA_CHECK_LAUNCH("kv_append_kernel");
}

}  // namespace subq::cuda
