// What the GPU's top-k block selectors (moba.cu, hip.cu) share: their input checks, block
// means, the CSR layout of rows that each keep min(top_k, past) blocks and the diagonal,
// and the ranking rule of candidate blocks.
#pragma once

#include <cstdint>
#include <vector>

#include "src/ops/attention/flash_attention.h"
#include "src/ops/attention/selectors/static_selectors.h"
#include "subq/tensor.h"

namespace subq::cuda::selectors {

// Checks g (q_block == k_block, block-aligned q_offset, causal prefill) and q [Tq, Hq, Dh],
// k [Tk, Hkv, Dh]: f32 in GPU memory, last dimension contiguous, Hkv dividing Hq, Dh <= 256.
void check_inputs(const attn::MaskGeometry& g, const Tensor& q, const Tensor& k, int64_t top_k, const char* who);

// The mean of every `block` rows of every head of x [T, H, D] as f32 [H, blocks, D].
Tensor block_means(const Tensor& x, int64_t block);

// A causal per-head mask of g's geometry with every row still empty (row_start zeros).
attn::BlockMask empty_rows(const attn::MaskGeometry& g, int64_t heads);

// A mask's row_start as i32 on the GPU.
Tensor device_row_start(const std::vector<int64_t>& row_start);

// A causal per-head mask whose row (h, qb) will hold min(top_k, past) blocks chosen
// among the complete blocks before its diagonal (past = min(first + qb, nkb)), in
// increasing order, then the diagonal: the layout is known before any score is, so
// the host lays out row_start and the kernel fills the rows. key_blocks is sized on the
// GPU and left for the kernel; host.key_blocks stays empty (download() fetches it).
DeviceBlockMask top_k_rows(const attn::MaskGeometry& g, int64_t heads, int64_t top_k);

// Candidate order: a NaN score (a block already taken) never wins; otherwise the higher
// score, then the lower block, as the CPU selectors' sorts.
__device__ inline bool better(float s, int i, float best_s, int best_i) {
  if (isnan(s)) return false;
  if (isnan(best_s)) return true;
  return s > best_s || (s == best_s && i < best_i);
}

}  // namespace subq::cuda::selectors
