// MoBA's block selection on the GPU (moba.cpp is the CPU form): block-mean queries and
// keys, then CTAs of up to 8 (head, query block) rows that score every past key block,
// take each row's top_k by repeated arg-max and write them in order, the diagonal last.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
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

// The kRows partial sums of every lane reduced over the warp in 9 shuffles instead of
// 8 x 5: each exchange halves the rows a lane carries. Returns the sum of row
// row_of_lane(lane); lanes 4 apart share a row.
constexpr int kRows = 8;
__device__ int row_of_lane(int lane) { return (lane >> 4 & 1) * 4 + (lane >> 3 & 1) * 2 + (lane >> 2 & 1); }
__device__ float transpose_reduce(float (&v)[kRows], int lane) {
#pragma unroll
  for (int half = kRows / 2, bit = 16; half >= 1; half /= 2, bit /= 2) {
    const bool upper = lane & bit;
#pragma unroll
    for (int i = 0; i < half; ++i) {
      const float sent = upper ? v[i] : v[i + half];
      v[i] = (upper ? v[i + half] : v[i]) + __shfl_xor_sync(0xffffffffu, sent, bit);
    }
  }
  v[0] += __shfl_xor_sync(0xffffffffu, v[0], 2);
  return v[0] + __shfl_xor_sync(0xffffffffu, v[0], 1);
}

// One CTA scores up to kRows query rows that share a KV head: `heads` consecutive heads
// of one group (blockIdx.y) times `blocks` consecutive query blocks (blockIdx.x). Each
// warp reads a past key block's mean once for all of them (query means in registers,
// kDimPerLane dimensions per lane), then warp w takes row w's top_k by repeated arg-max
// and writes them in order, the diagonal block last, at key_blocks[row_start[h * nqb + qb]].
template <int kDimPerLane>
__global__ void __launch_bounds__(kThreads) moba_rows_kernel(const float* q_means, const float* k_means, int nqb,
                                                             int nkb, int dim, int heads, int blocks, int group,
                                                             int first, int top_k, const int32_t* row_start,
                                                             int32_t* key_blocks) {
  extern __shared__ float smem[];
  float* score = smem;                                                // [heads * blocks][nkb]
  int* chosen = reinterpret_cast<int*>(score + heads * blocks * nkb);  // [heads * blocks][top_k]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int h0 = blockIdx.y * heads, qb0 = blockIdx.x * blocks;
  const auto head_of = [&](int r) { return h0 + r / blocks; };
  const auto block_of = [&](int r) { return qb0 + r % blocks; };
  const auto past_of = [&](int r) {
    return r < heads * blocks && block_of(r) < nqb ? min(first + block_of(r), nkb) : 0;
  };

  float q[kRows][kDimPerLane];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const bool row = r < heads * blocks && block_of(r) < nqb;
    const float* src = q_means + (static_cast<int64_t>(head_of(r)) * nqb + block_of(r)) * dim;
#pragma unroll
    for (int j = 0; j < kDimPerLane; ++j) {
      const int d = lane + 32 * j;
      q[r][j] = row && d < dim ? src[d] : 0.f;
    }
  }
  int most = 0;
  for (int r = 0; r < kRows; ++r) most = max(most, past_of(r));
  const float* kh = k_means + static_cast<int64_t>(h0 / group) * nkb * dim;
  const int my_row = row_of_lane(lane);
  const int my_past = past_of(my_row);
  for (int kb = warp; kb < most; kb += kWarps) {
    float k[kDimPerLane];
#pragma unroll
    for (int j = 0; j < kDimPerLane; ++j) {
      const int d = lane + 32 * j;
      k[j] = d < dim ? kh[static_cast<int64_t>(kb) * dim + d] : 0.f;
    }
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      acc[r] = 0.f;
#pragma unroll
      for (int j = 0; j < kDimPerLane; ++j) acc[r] = fmaf(q[r][j], k[j], acc[r]);
    }
    const float s = transpose_reduce(acc, lane);
    // A NaN input ranks lowest rather than marking the block as taken.
    if (lane % 4 == 0 && kb < my_past) score[my_row * nkb + kb] = isnan(s) ? -INFINITY : s;
  }
  __syncthreads();

  if (warp >= heads * blocks || block_of(warp) >= nqb) return;
  float* row_score = score + warp * nkb;
  int* row_chosen = chosen + warp * top_k;
  const int past = past_of(warp), keep = min(top_k, past);
  for (int round = 0; round < keep; ++round) {
    float s = NAN;
    int i = 0x7fffffff;
    for (int kb = lane; kb < past; kb += 32)
      if (better(row_score[kb], kb, s, i)) s = row_score[kb], i = kb;
    for (int off = 16; off > 0; off /= 2) {
      const float os = __shfl_xor_sync(0xffffffffu, s, off);
      const int oi = __shfl_xor_sync(0xffffffffu, i, off);
      if (better(os, oi, s, i)) s = os, i = oi;
    }
    __syncwarp();  // every lane's reads of this round before lane 0 marks the winner
    if (lane == 0) row_chosen[round] = i, row_score[i] = NAN;
    __syncwarp();
  }
  int32_t* out = key_blocks + row_start[static_cast<int64_t>(head_of(warp)) * nqb + block_of(warp)];
  for (int c = lane; c < keep; c += 32) {
    int rank = 0;
    for (int j = 0; j < keep; ++j) rank += row_chosen[j] < row_chosen[c];
    out[rank] = row_chosen[c];
  }
  if (lane == 0) out[keep] = first + block_of(warp);
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
  if (nkb > (int64_t{1} << 30) || Hq > 65535 || Dh > 256)
    throw Error("moba_mask: sizes past the GPU kernel's limits (" + std::to_string(nkb) + " key blocks, " +
                std::to_string(Hq) + " heads, head dim " + std::to_string(Dh) + " > 256)");

  // Row lengths follow from the geometry alone (min(top_k, past) chosen blocks and the
  // diagonal), so the kernel fills rows laid out here; the blocks stay in GPU memory
  // (download() fetches them).
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

  // Rows per CTA: up to kRows, as many as their scores fit in shared memory; heads of one
  // group first (they share the key means), then consecutive query blocks.
  const int64_t group = Hq / Hkv, keep_max = std::min(top_k, nkb);
  const int64_t row_bytes = (nkb + keep_max) * static_cast<int64_t>(sizeof(float));
  const int64_t fit = std::min<int64_t>(kRows, static_cast<int64_t>(device_info().shared_memory_optin) / row_bytes);
  if (fit < 1)
    throw Error("moba_mask: " + std::to_string(nkb) + " key blocks need " + std::to_string(row_bytes) +
                " bytes of shared memory per query block, more than the GPU's " +
                std::to_string(device_info().shared_memory_optin) + "; use a larger block");
  int64_t heads = fit;
  while (group % heads != 0) --heads;
  const int64_t blocks = fit / heads;
  const size_t smem = static_cast<size_t>(heads * blocks * row_bytes);

  Tensor starts = Tensor::empty(DType::i32, {Hq * nqb + 1});
  std::transform(mask.row_start.begin(), mask.row_start.end(), starts.mutable_data<int32_t>(),
                 [](int64_t s) { return static_cast<int32_t>(s); });
  const Tensor device_starts = to_device(starts);
  const Tensor listed_blocks = empty(DType::i32, {listed});
  const Tensor qm = block_means(q, blk), km = block_means(k, blk);
  const auto launch = [&](auto kernel) {
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<dim3(static_cast<unsigned>((nqb + blocks - 1) / blocks), static_cast<unsigned>(Hq / heads)), kThreads,
             smem, stream()>>>(qm.device_data<float>(), km.device_data<float>(), static_cast<int>(nqb),
                               static_cast<int>(nkb), static_cast<int>(Dh), static_cast<int>(heads),
                               static_cast<int>(blocks), static_cast<int>(group), static_cast<int>(first),
                               static_cast<int>(keep_max), device_starts.device_data<int32_t>(),
                               listed_blocks.mutable_device_data<int32_t>());
    SUBQ_CUDA_CHECK_LAUNCH("moba_rows_kernel");
  };
  if (Dh <= 32) launch(moba_rows_kernel<1>);
  else if (Dh <= 64) launch(moba_rows_kernel<2>);
  else if (Dh <= 128) launch(moba_rows_kernel<4>);
  else launch(moba_rows_kernel<8>);

  return DeviceBlockMask{std::move(mask), device_starts, listed_blocks};
}

}  // namespace subq::cuda
