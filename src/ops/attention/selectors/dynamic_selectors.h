// Dynamic, training-free sparse-prefill selectors: each reads the queries and keys of
// `qk` (an AttentionArgs: q, k pointers with their strides, batch, heads, head_dim,
// scale; the keys f32, else Error) and returns a causal per-(batch, head) BlockMask. Every mask keeps each query
// block's diagonal block, so no row is ever empty. All need q_block == k_block and
// q_offset on a block boundary (g gives q_len, kv_len and the block size).
#pragma once

#include <cstdint>

#include "src/ops/attention/block_mask.h"
#include "src/ops/attention/flash.h"
#include "src/ops/attention/selectors/static_selectors.h"

namespace subq::attn {

// MoBA: key blocks scored by the mean-pooled query block against mean-pooled key blocks;
// the top_k past blocks plus the diagonal are kept.
BlockMask moba_mask(const MaskGeometry& g, const AttentionArgs& qk, int64_t top_k);

// FlexPrefill: per head, the last query block's exact attention (block-summed) is
// compared with the pooled estimate by Jensen-Shannon distance; below tau the head is
// query-aware (per query block, pooled block scores kept until their softmax mass reaches
// gamma), otherwise vertical-slash (key columns and diagonals of the last block's
// attention kept until each reaches mass gamma, mapped to blocks).
BlockMask flexprefill_mask(const MaskGeometry& g, const AttentionArgs& qk, double gamma, double tau);

// XAttention: each block pair scored by the softmax mass on its strided antidiagonals
// (computed as a GEMM of stride-reshaped Q and K); per query block the highest-scoring
// blocks are kept until their share of the mass reaches `threshold`. block % stride == 0.
BlockMask xattention_mask(const MaskGeometry& g, const AttentionArgs& qk, double threshold, int64_t stride);

// HiP: hierarchical top-k pruning. The past key blocks are halved level by level, each
// half scored by its middle block's pooled key against the pooled query, keeping top_k
// halves per level: O(top_k log n) scores per query block, O(T log T) in all.
BlockMask hip_mask(const MaskGeometry& g, const AttentionArgs& qk, int64_t top_k);

}  // namespace subq::attn
