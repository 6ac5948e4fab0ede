// Dynamic sparse-prefill selectors on the GPU: the same masks as dynamic_selectors.h,
// built from queries and keys already in GPU memory, so a long prompt's mask costs no
// copy of q and k to the host and no CPU pass over them.
#pragma once

#include <cstdint>

#include "src/ops/attention/flash_attention.h"
#include "src/ops/attention/selectors/static_selectors.h"
#include "subq/tensor.h"

namespace subq::cuda {

// Each builds its mask's rows on the GPU and leaves the blocks there (DeviceBlockMask's
// host.key_blocks is empty; download() fetches them).

// MoBA (attn::moba_mask) for one sequence: q [Tq, Hq, Dh] and k [Tk, Hkv, Dh], f32 in GPU
// memory, each row a token (rows and heads may be strided, as head ranges of a fused
// projection; the last dimension contiguous), g as for the CPU selector (q_block ==
// k_block, causal prefill: Tk >= q_offset + Tq). Block means and scores are f32 sums in
// another order than the CPU's, so blocks whose scores tie to rounding may be chosen
// differently; the ranking rule (higher score, then lower block) is the same.
DeviceBlockMask moba_mask(const attn::MaskGeometry& g, const Tensor& q, const Tensor& k, int64_t top_k);

// HiP (attn::hip_mask) for one sequence, from q and k as for moba_mask; top_k >= 1. As
// there, rounding may swap blocks whose scores tie, and then the halves below them.
DeviceBlockMask hip_mask(const attn::MaskGeometry& g, const Tensor& q, const Tensor& k, int64_t top_k);

// XAttention (attn::xattention_mask) for one sequence, from q and k as for moba_mask and
// the attention's scale: antidiagonal scores of q and k rounded to bf16 (as the attention
// reads them; the CPU selector scores the f32 values it is given) by tensor-core GEMMs
// with f32 accumulation, their per-block softmax mass and each row's selection on the
// GPU. On bf16-representable inputs the mask is the CPU's but for sums in another order,
// which may move a block whose mass sits on the threshold.
DeviceBlockMask xattention_mask(const attn::MaskGeometry& g, const Tensor& q, const Tensor& k, double threshold,
                                int64_t stride, float scale);

// FlexPrefill (attn::flexprefill_mask) for one sequence, from q and k as for moba_mask and
// the attention's scale: the last query block's exact attention by an f32 GEMM, each
// head's pattern and rows on the GPU. As there, sums in another order may move a block,
// vertical or slash whose mass sits on gamma, or a head whose distance sits on tau.
DeviceBlockMask flexprefill_mask(const attn::MaskGeometry& g, const Tensor& q, const Tensor& k, double gamma,
                                 double tau, float scale);

}  // namespace subq::cuda
