// MoBA's block selection on the GPU (moba.cpp is the CPU form): block-mean queries and
// keys, then CTAs of up to 8 (head, query block) rows that score every past key block,
// take each row's top_k by repeated arg-max and write them in order, the diagonal last.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/ops/attention/selectors/dynamic_selectors_cuda.h"
#include "src/ops/attention/selectors/top_k_rows_cuda.cuh"

namespace subq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

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
      if (selectors::better(row_score[kb], kb, s, i)) s = row_score[kb], i = kb;
    for (int off = 16; off > 0; off /= 2) {
      const float os = __shfl_xor_sync(0xffffffffu, s, off);
      const int oi = __shfl_xor_sync(0xffffffffu, i, off);
      if (selectors::better(os, oi, s, i)) s = os, i = oi;
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

}  // namespace

DeviceBlockMask moba_mask(const attn::MaskGeometry& g, const Tensor& q, const Tensor& k, int64_t top_k) {
  selectors::check_inputs(g, q, k, top_k, "moba_mask");
  const int64_t Hq = q.dim(1), Hkv = k.dim(1), Dh = q.dim(2), blk = g.q_block;
  const int64_t nqb = (g.q_len + blk - 1) / blk, nkb = (g.kv_len + blk - 1) / blk, first = g.q_offset / blk;
  DeviceBlockMask mask = selectors::top_k_rows(g, Hq, top_k);
  if (mask.host.row_start.back() == 0) return mask;

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

  const Tensor qm = selectors::block_means(q, blk), km = selectors::block_means(k, blk);
  const auto launch = [&](auto kernel) {
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<dim3(static_cast<unsigned>((nqb + blocks - 1) / blocks), static_cast<unsigned>(Hq / heads)), kThreads,
             smem, stream()>>>(qm.device_data<float>(), km.device_data<float>(), static_cast<int>(nqb),
                               static_cast<int>(nkb), static_cast<int>(Dh), static_cast<int>(heads),
                               static_cast<int>(blocks), static_cast<int>(group), static_cast<int>(first),
                               static_cast<int>(keep_max), mask.row_start.device_data<int32_t>(),
                               mask.key_blocks.mutable_device_data<int32_t>());
    SUBQ_CUDA_CHECK_LAUNCH("moba_rows_kernel");
  };
  if (Dh <= 32) launch(moba_rows_kernel<1>);
  else if (Dh <= 64) launch(moba_rows_kernel<2>);
  else if (Dh <= 128) launch(moba_rows_kernel<4>);
  else launch(moba_rows_kernel<8>);
  choose_row_pairing(mask);
  return mask;
}

}  // namespace subq::cuda
