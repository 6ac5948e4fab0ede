// The one attention executor (family A): flash attention forward over a BlockMask, and
// split-KV decode over a long key range. Softmax(q·k * scale) with f32 accumulation and
// an online (running max / running sum) softmax, so extra memory is O(rows) per thread.
#pragma once

#include <cstdint>

#include "src/ops/attention/block_mask.h"
#include "subq/tensor.h"

namespace subq::attn {

// Raw-pointer view of one attention problem. Rows are tokens; inside a row the heads are
// contiguous with stride head_dim: q/o are [B, Tq, Hq, Dh] f32, k/v are [B, Tk, Hkv, Dh]
// of kv_dtype (f32, or bf16 as a bf16 KV cache holds them: the executor widens them as
// it reads, accumulating in f32) with the given batch and row strides (elements). Query
// head h reads key/value head h / (Hq / Hkv) (GQA/MQA). Query row i has position
// q_offset + i; key slot j has position key_positions[j] (shared by the batch) or j when
// key_positions is null.
struct AttentionArgs {
  const float* q = nullptr;
  int64_t q_batch_stride = 0, q_row_stride = 0;
  const void* k = nullptr;
  int64_t k_batch_stride = 0, k_row_stride = 0;
  const void* v = nullptr;
  int64_t v_batch_stride = 0, v_row_stride = 0;
  DType kv_dtype = DType::f32;
  float* o = nullptr;
  int64_t o_batch_stride = 0, o_row_stride = 0;
  int64_t batch = 1, q_len = 0, kv_len = 0, q_heads = 1, kv_heads = 1, head_dim = 0;
  float scale = 1.f;
  float softcap = 0.f;  // > 0: logits become softcap * tanh(logits / softcap)
  const int32_t* key_positions = nullptr;

  // k as f32, for readers other than the executor (the dynamic selectors); throws Error
  // naming `who` when kv_dtype is not f32.
  const float* f32_keys(const char* who) const;
};

// Query rows per block for dense (causal) prefill over kv_len keys. While one head's K and
// V fit in ~1 MiB (L2) the diagonal waste of big query blocks costs more than it saves;
// beyond that, 256-row blocks stream each K/V block a quarter as often (measured on one
// AVX-512 thread: 1.3-1.75x at T = 16K, Dh = 128; equal at 2K; 64 rows better at 1K).
inline int64_t dense_query_block(int64_t kv_len, int64_t head_dim) {
  return kv_len * head_dim * 8 > (int64_t{1} << 20) ? 256 : 64;
}

// Checks sizes and runs the flash forward over `mask` (whose q_len, kv_len must match and
// whose batch/heads are 1 or equal to the args'). Parallel over (batch, head, query block).
// Rows with no allowed key get 0.
void flash_attention(const AttentionArgs& args, const BlockMask& mask);

// Split-KV decode (FlashDecoding): every query row attends to all kv_len key slots under
// `rule` (query positions q_offset + i), the keys split into `splits` ranges processed in
// parallel and merged by log-sum-exp. splits <= 0 picks enough to fill the thread pool.
// Meant for few query rows (decode, Tq small) against many keys.
void decode_attention(const AttentionArgs& args, const ElementRule& rule, int64_t q_offset, int64_t splits = 0);

namespace detail {
// Throws Error (prefixed with `who`) unless the args describe a valid problem.
void check_args(const AttentionArgs& args, const char* who);
}  // namespace detail

// Tensor entry: q [B, Tq, Hq, Dh], k/v [B, Tk, Hkv, Dh], out [B, Tq, Hq, Dh], all
// contiguous; q and out f32, k and v both f32 or both bf16. scale <= 0 means 1 / sqrt(Dh).
struct AttentionOptions {
  float scale = 0.f;
  float softcap = 0.f;
};
void flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const BlockMask& mask,
                     const AttentionOptions& options, const Tensor& out);

}  // namespace subq::attn
