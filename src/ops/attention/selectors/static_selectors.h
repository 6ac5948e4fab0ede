// Static sparse-attention selectors: each builds a BlockMask from sizes alone.
// Query row i is at absolute position q_offset + i; key slot j at j (or key_positions[j]).
#pragma once

#include <cstdint>

#include "src/ops/attention/block_mask.h"

namespace subq::attn {

// Where a mask is built: the problem sizes and block sizes. Masks that depend on the
// head (BigBird's random blocks) use `heads`; the others are shared by all heads.
struct MaskGeometry {
  int64_t q_len = 0, kv_len = 0;
  int64_t q_offset = 0;
  int64_t q_block = 64, k_block = 64;
  int64_t heads = 1;
  const int32_t* key_positions = nullptr;  // sorted positions of the key slots, or null
};

// Sliding window (Longformer, Mistral; with sinks StreamingLLM). Causal: query at p sees
// keys in [p - window + 1, p]; non-causal: keys within window / 2 on either side. Keys
// at positions < sinks are always visible (still causally). Exact at any q_offset and
// with key_positions, so it also serves chunked prefill against an evicting cache.
BlockMask sliding_window_mask(const MaskGeometry& g, int64_t window, int64_t sinks, bool causal);

// BigBird: `global_blocks` leading blocks are seen by and (non-causal) see everything;
// each query block sees `window_blocks` blocks on each side (causal: before it) and
// `random_blocks` further blocks drawn per (head, query block) from `seed`. Needs
// q_block == k_block and q_offset a multiple of it.
BlockMask bigbird_mask(const MaskGeometry& g, int64_t global_blocks, int64_t window_blocks, int64_t random_blocks,
                       uint64_t seed, bool causal);
// The random key blocks BigBird adds for absolute query block `qb` of head `h`: up to
// `count` distinct blocks from [0, limit) that are not in [skip_lo, skip_hi] and not
// below `global_blocks`, sorted. Deterministic in (seed, h, qb).
std::vector<int32_t> bigbird_random_blocks(uint64_t seed, int64_t h, int64_t qb, int64_t count, int64_t limit,
                                           int64_t global_blocks, int64_t skip_lo, int64_t skip_hi);

// Neighborhood attention on a 1-3D grid (NA / GNA, NATTEN's clamped border windows,
// dilation, stride, per-dimension causality). Self-attention over the whole grid:
// q_len == kv_len == n.tokens(), q_offset 0.
BlockMask neighborhood_mask(const MaskGeometry& g, const Neighborhood& n);

// PowerAttention: query block b sees key blocks b - d for d in [0, local_blocks] and for
// every power of two d, plus the first `sink_blocks` blocks (causal); non-causal uses
// |d|. Needs q_block == k_block and q_offset a multiple of it.
BlockMask power_attention_mask(const MaskGeometry& g, int64_t local_blocks, int64_t sink_blocks, bool causal);

}  // namespace subq::attn
