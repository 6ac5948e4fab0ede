// MoBA's block selection on the GPU (moba.cpp is the CPU form): block-mean queries and
// keys, then one CTA per (head, query block) that scores every past key block, takes the
// top_k by repeated arg-max and writes them in order, the diagonal block last.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/ops/attention/selectors/block_geometry.h"
#include "src/ops/attention/selectors/dynamic_selectors_cuda.h"

namespace subq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// out[(h * blocks + b) * dim + x]: the mean of rows [b * block, min(rows, (b + 1) * block))
// of head h. One CTA per (block, head), threads across the dimension.
__global__ void block_means_kernel(const float* x, int64_t row_stride, int64_t head_stride, int64_t rows, int dim,
                                   int block, float* out) {
  const int64_t b = blockIdx.x, h = blockIdx.y, blocks = gridDim.x;
  const int64_t r0 = b * block, r1 = min(rows, r0 + block);
  const float inv = 1.f / static_cast<float>(r1 - r0);
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float s = 0.f;
    for (int64_t r = r0; r < r1; ++r) s += x[r * row_stride + h * head_stride + d];
    out[(h * blocks + b) * dim + d] = s * inv;
  }
}

// Candidate order: a NaN score (a block already taken) never wins; otherwise the higher
// score, then the lower block, as the CPU's partial_sort.
__device__ bool better(float s, int i, float best_s, int best_i) {
  if (isnan(s)) return false;
  if (isnan(best_s)) return true;
  return s > best_s || (s == best_s && i < best_i);
}

__device__ void warp_best(float& s, int& i) {
  for (int off = 16; off > 0; off /= 2) {
    const float os = __shfl_xor_sync(0xffffffffu, s, off);
    const int oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (better(os, oi, s, i)) s = os, i = oi;
  }
}

// Query block qb (blockIdx.x) of head h (blockIdx.y): scores of its mean query against
// the mean keys of the complete blocks before its diagonal, the top_k of them, sorted,
// then the diagonal, at key_blocks[row_start[h * nqb + qb]].
__global__ void __launch_bounds__(kThreads) moba_rows_kernel(const float* q_means, const float* k_means, int nkb,
                                                             int dim, int group, int first, int top_k,
                                                             const int32_t* row_start, int32_t* key_blocks) {
  extern __shared__ float smem[];
  __shared__ float warp_s[kWarps];
  __shared__ int warp_i[kWarps];
  const int qb = blockIdx.x, h = blockIdx.y, nqb = gridDim.x;
  const int past = min(first + qb, nkb), keep = min(top_k, past);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float* qm = smem;
  float* score = qm + dim;
  int* chosen = reinterpret_cast<int*>(score + nkb);

  const float* qsrc = q_means + (static_cast<int64_t>(h) * nqb + qb) * dim;
  for (int d = threadIdx.x; d < dim; d += kThreads) qm[d] = qsrc[d];
  __syncthreads();
  const float* kh = k_means + static_cast<int64_t>(h / group) * nkb * dim;
  for (int kb = warp; kb < past; kb += kWarps) {
    const float* kr = kh + static_cast<int64_t>(kb) * dim;
    float s = 0.f;
    for (int d = lane; d < dim; d += 32) s = fmaf(qm[d], kr[d], s);
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    // A NaN input ranks lowest rather than marking the block as taken.
    if (lane == 0) score[kb] = isnan(s) ? -INFINITY : s;
  }
  __syncthreads();

  for (int round = 0; round < keep; ++round) {
    float s = NAN;
    int i = 0x7fffffff;
    for (int kb = threadIdx.x; kb < past; kb += kThreads)
      if (better(score[kb], kb, s, i)) s = score[kb], i = kb;
    warp_best(s, i);
    if (lane == 0) warp_s[warp] = s, warp_i[warp] = i;
    __syncthreads();
    if (warp == 0) {
      s = lane < kWarps ? warp_s[lane] : NAN;
      i = lane < kWarps ? warp_i[lane] : 0x7fffffff;
      warp_best(s, i);
      if (lane == 0) chosen[round] = i, score[i] = NAN;
    }
    __syncthreads();
  }

  int32_t* row = key_blocks + row_start[static_cast<int64_t>(h) * nqb + qb];
  for (int c = threadIdx.x; c < keep; c += kThreads) {
    int rank = 0;
    for (int j = 0; j < keep; ++j) rank += chosen[j] < chosen[c];
    row[rank] = chosen[c];
  }
  if (threadIdx.x == 0) row[keep] = first + qb;
}

void check_rows_tensor(const Tensor& t, const char* what) {
  const std::string w = std::string("moba_mask ") + what;
  if (t.device() != Device::cuda) throw Error(w + ": must be in GPU memory, found " + t.str() + " on the CPU");
  if (t.dtype() != DType::f32) throw Error(w + ": must be f32, found " + t.str());
  if (t.ndim() != 3 || t.dim(1) < 1 || t.dim(2) < 1)
    throw Error(w + ": expected [T, heads, head_dim], found " + t.str());
  if (t.stride(2) != 1) throw Error(w + ": the head dimension must be contiguous, found " + t.str());
}

Tensor block_means(const Tensor& x, int64_t block) {
  const int64_t rows = x.dim(0), heads = x.dim(1), dim = x.dim(2), blocks = (rows + block - 1) / block;
  Tensor out = empty(DType::f32, {heads, blocks, dim});
  if (blocks == 0) return out;
  block_means_kernel<<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(heads)), 128, 0, stream()>>>(
      x.device_data<float>(), x.stride(0), x.stride(1), rows, static_cast<int>(dim), static_cast<int>(block),
      out.mutable_device_data<float>());
  SUBQ_CUDA_CHECK_LAUNCH("block_means_kernel");
  return out;
}

}  // namespace

DeviceBlockMask moba_mask(const attn::MaskGeometry& g, const Tensor& q, const Tensor& k, int64_t top_k) {
  attn::check_aligned_blocks(g, "moba_mask");
  if (top_k < 0) throw Error("moba_mask: top_k must be >= 0, found " + std::to_string(top_k));
  check_rows_tensor(q, "q");
  check_rows_tensor(k, "k");
  if (q.dim(1) % k.dim(1) != 0)
    throw Error("moba_mask: the key heads must divide the query heads, found q " + q.str() + " and k " + k.str());
  if (q.dim(0) != g.q_len || k.dim(0) != g.kv_len || k.dim(2) != q.dim(2))
    throw Error("moba_mask: q " + q.str() + " and k " + k.str() + " do not match the mask's lengths " +
                std::to_string(g.q_len) + "/" + std::to_string(g.kv_len) + " and one head dim");
  if (g.q_offset + g.q_len > g.kv_len)
    throw Error("moba_mask: causal prefill needs kv_len >= q_offset + q_len, found kv_len " + std::to_string(g.kv_len));
  const int64_t Hq = q.dim(1), Hkv = k.dim(1), Dh = q.dim(2), blk = g.q_block;
  const int64_t nqb = (g.q_len + blk - 1) / blk, nkb = (g.kv_len + blk - 1) / blk, first = g.q_offset / blk;
  if (nkb > (int64_t{1} << 30) || Hq > 65535 || Dh > 4096)
    throw Error("moba_mask: sizes past the GPU kernel's limits (" + std::to_string(nkb) + " key blocks, " +
                std::to_string(Hq) + " heads, head dim " + std::to_string(Dh) + ")");

  // Row lengths follow from the geometry alone: min(top_k, past) chosen blocks + the
  // diagonal, so the CSR offsets are laid out here and the kernel fills the rows.
  attn::BlockMask mask;
  mask.heads = Hq;
  mask.q_len = g.q_len;
  mask.kv_len = g.kv_len;
  mask.q_block = mask.k_block = blk;
  mask.q_offset = g.q_offset;
  mask.rule.causal = true;
  mask.row_start.assign(static_cast<size_t>(Hq * nqb + 1), 0);
  for (int64_t r = 0; r < Hq * nqb; ++r)
    mask.row_start[static_cast<size_t>(r) + 1] =
        mask.row_start[static_cast<size_t>(r)] + std::min(top_k, std::min(first + r % nqb, nkb)) + 1;
  const int64_t listed = mask.row_start.back();
  if (listed == 0) return upload(mask);
  if (listed >= (int64_t{1} << 31))
    throw Error("moba_mask: " + std::to_string(listed) + " listed blocks is past the GPU kernel's 32-bit offsets");

  const size_t keep_max = static_cast<size_t>(std::min(top_k, nkb));
  const size_t smem = static_cast<size_t>(Dh + nkb) * sizeof(float) + keep_max * sizeof(int);
  if (smem > device_info().shared_memory_optin)
    throw Error("moba_mask: " + std::to_string(nkb) + " key blocks need " + std::to_string(smem) +
                " bytes of shared memory per block, more than the GPU's " +
                std::to_string(device_info().shared_memory_optin) + "; use a larger block");
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(moba_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));

  Tensor starts = Tensor::empty(DType::i32, {Hq * nqb + 1});
  std::transform(mask.row_start.begin(), mask.row_start.end(), starts.mutable_data<int32_t>(),
                 [](int64_t s) { return static_cast<int32_t>(s); });
  const Tensor device_starts = to_device(starts);
  const Tensor blocks = empty(DType::i32, {listed});
  const Tensor qm = block_means(q, blk), km = block_means(k, blk);
  moba_rows_kernel<<<dim3(static_cast<unsigned>(nqb), static_cast<unsigned>(Hq)), kThreads, smem, stream()>>>(
      qm.device_data<float>(), km.device_data<float>(), static_cast<int>(nkb), static_cast<int>(Dh),
      static_cast<int>(Hq / Hkv), static_cast<int>(first), static_cast<int>(std::min<int64_t>(top_k, nkb)),
      device_starts.device_data<int32_t>(), blocks.mutable_device_data<int32_t>());
  SUBQ_CUDA_CHECK_LAUNCH("moba_rows_kernel");

  // The host keeps the whole mask (DeviceBlockMask::host), and upload() checks it as it
  // checks every CPU-built mask before a kernel trusts its block lists.
  const Tensor host_blocks = to_host(blocks);
  mask.key_blocks.assign(host_blocks.data<int32_t>(), host_blocks.data<int32_t>() + listed);
  return upload(mask);
}

}  // namespace subq::cuda
