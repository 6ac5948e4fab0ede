// HiP's hierarchical block selection on the GPU (hip.cpp is the CPU form): block-mean
// queries and keys, then a warp per (head, query block) row that halves its candidate
// ranges of past blocks level by level, scores each half by its middle block's mean key
// and keeps the top_k halves, until only single blocks are left.
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
// Shared memory per warp, in 4-byte words per unit of top_k: the kept ranges (lo, hi)
// and up to 2 top_k candidates (lo, hi, score).
constexpr int kWordsPerTopK = 2 + 3 * 2;

// Row r = h * nqb + qb of the mask (warp w of CTA blockIdx.x takes row
// blockIdx.x * kWarps + w); query means in registers, kDimPerLane dimensions per lane.
template <int kDimPerLane>
__global__ void __launch_bounds__(kThreads) hip_rows_kernel(const float* q_means, const float* k_means, int nqb,
                                                            int nkb, int dim, int group, int first, int top_k,
                                                            int64_t rows, const int32_t* row_start,
                                                            int32_t* key_blocks) {
  extern __shared__ int words[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (r >= rows) return;
  int* lo = words + warp * kWordsPerTopK * top_k;
  int* hi = lo + top_k;
  int* cand_lo = hi + top_k;
  int* cand_hi = cand_lo + 2 * top_k;
  float* cand_score = reinterpret_cast<float*>(cand_hi + 2 * top_k);
  const int qb = static_cast<int>(r % nqb), h = static_cast<int>(r / nqb);
  const int past = min(first + qb, nkb);

  float q[kDimPerLane];
  const float* qsrc = q_means + r * dim;
#pragma unroll
  for (int j = 0; j < kDimPerLane; ++j) q[j] = lane + 32 * j < dim ? qsrc[lane + 32 * j] : 0.f;
  const float* kh = k_means + static_cast<int64_t>(h / group) * nkb * dim;

  int n = past > 0 ? 1 : 0;
  if (lane == 0) lo[0] = 0, hi[0] = past;
  __syncwarp();
  while (n > 0) {
    // Each range becomes its two halves, or itself when it is one block.
    int candidates = 0;
    bool split = false;
    for (int base = 0; base < n; base += 32) {
      const int i = base + lane;
      const bool range = i < n;
      const int l = range ? lo[i] : 0, u = range ? hi[i] : 0;
      const bool halves = range && u - l > 1;
      const unsigned ranges = __ballot_sync(0xffffffffu, range), halved = __ballot_sync(0xffffffffu, halves);
      const unsigned before = (1u << lane) - 1;
      const int at = candidates + __popc(ranges & before) + __popc(halved & before);
      if (halves) {
        const int m = (l + u) / 2;
        cand_lo[at] = l, cand_hi[at] = m, cand_lo[at + 1] = m, cand_hi[at + 1] = u;
      } else if (range) {
        cand_lo[at] = l, cand_hi[at] = u;
      }
      candidates += __popc(ranges) + __popc(halved);
      split |= halved != 0;
    }
    __syncwarp();
    for (int c = 0; c < candidates; ++c) {
      const float* kr = kh + static_cast<int64_t>((cand_lo[c] + cand_hi[c]) / 2) * dim;
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < kDimPerLane; ++j) s = fmaf(q[j], lane + 32 * j < dim ? kr[lane + 32 * j] : 0.f, s);
      for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
      // A NaN input ranks lowest (selectors::better never picks NaN).
      if (lane == 0) cand_score[c] = isnan(s) ? -INFINITY : s;
    }
    __syncwarp();
    // The top_k candidates by score (then lower block), each placed at its rank.
    const int keep = min(candidates, top_k);
    for (int c = lane; c < candidates; c += 32) {
      int rank = 0;
      for (int o = 0; o < candidates; ++o)
        rank += selectors::better(cand_score[o], cand_lo[o], cand_score[c], cand_lo[c]);
      if (rank < keep) lo[rank] = cand_lo[c], hi[rank] = cand_hi[c];
    }
    __syncwarp();
    n = keep;
    if (!split) break;
  }

  // n single blocks are left; written in increasing order, the diagonal last.
  int32_t* out = key_blocks + row_start[r];
  for (int c = lane; c < n; c += 32) {
    int rank = 0;
    for (int o = 0; o < n; ++o) rank += lo[o] < lo[c];
    out[rank] = lo[c];
  }
  if (lane == 0) out[n] = first + qb;
}

}  // namespace

DeviceBlockMask hip_mask(const attn::MaskGeometry& g, const Tensor& q, const Tensor& k, int64_t top_k) {
  selectors::check_inputs(g, q, k, top_k, "hip_mask");
  if (top_k < 1) throw Error("hip_mask: top_k must be >= 1, found " + std::to_string(top_k));
  const int64_t Hq = q.dim(1), Dh = q.dim(2), blk = g.q_block;
  const int64_t nqb = (g.q_len + blk - 1) / blk, nkb = (g.kv_len + blk - 1) / blk;
  DeviceBlockMask mask = selectors::top_k_rows(g, Hq, top_k);
  if (mask.host.row_start.back() == 0) return mask;
  const int64_t kept = std::min(top_k, nkb);
  const size_t smem = static_cast<size_t>(kWarps * kWordsPerTopK * kept) * sizeof(int);
  if (smem > device_info().shared_memory_optin)
    throw Error("hip_mask: top_k " + std::to_string(top_k) + " needs " + std::to_string(smem) +
                " bytes of shared memory per block, more than the GPU's " +
                std::to_string(device_info().shared_memory_optin));

  const Tensor qm = selectors::block_means(q, blk), km = selectors::block_means(k, blk);
  const int64_t rows = Hq * nqb;
  const auto launch = [&](auto kernel) {
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kThreads, smem, stream()>>>(
        qm.device_data<float>(), km.device_data<float>(), static_cast<int>(nqb), static_cast<int>(nkb),
        static_cast<int>(Dh), static_cast<int>(Hq / k.dim(1)), static_cast<int>(g.q_offset / blk),
        static_cast<int>(kept), rows, mask.row_start.device_data<int32_t>(),
        mask.key_blocks.mutable_device_data<int32_t>());
    SUBQ_CUDA_CHECK_LAUNCH("hip_rows_kernel");
  };
  if (Dh <= 32) launch(hip_rows_kernel<1>);
  else if (Dh <= 64) launch(hip_rows_kernel<2>);
  else if (Dh <= 128) launch(hip_rows_kernel<4>);
  else launch(hip_rows_kernel<8>);
  choose_row_pairing(mask);
  return mask;
}

}  // namespace subq::cuda
