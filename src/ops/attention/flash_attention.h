// The attention executor (family A) on NVIDIA tensor cores (sm_80+): flash attention
// forward, dense or over a BlockMask, and split-KV decode. bf16 q/k/v/o, f32 scores,
// online softmax and accumulation; O(T) memory.
#pragma once

#include <cstdint>

#include "src/ops/attention/block_mask.h"
#include "subq/tensor.h"

namespace subq::cuda {

// o[B, Tq, H, D] = softmax(q k^T * scale) v for q[B, Tq, H, D], k and v[B, Tk, Hkv, D],
// all bf16, contiguous, in GPU memory. Grouped-query attention: query head h reads kv
// head h / (H / Hkv) (H must be a multiple of Hkv). Head dim D is 64, 128 or 256.
// causal: query i sees keys j <= i + (Tk - Tq), i.e. the queries are the last Tq
// positions of the keys' sequence; a query that sees no key gets a zero output.
void flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, bool causal,
                     float scale);

// A BlockMask in GPU memory, reusable by every launch over the same mask: a CPU
// selector's mask uploaded, or one a GPU selector built there (dynamic_selectors_cuda.h).
// Its element rule (causal, window with sinks, neighborhood windows) is evaluated on the
// GPU inside partially covered tiles. The kernel needs q_block 64 or 128 and k_block a
// multiple of 64.
struct DeviceBlockMask {
  // The mask's geometry, rule and row_start; its key_blocks too when uploaded, empty
  // when a GPU selector built it (download() fetches them).
  attn::BlockMask host;
  Tensor row_start;   // i32 [rows + 1] on the GPU
  Tensor key_blocks;  // i32 [listed blocks] on the GPU
  // With q_block 64 and D <= 128, on the sm_80 kernel: run two consecutive rows per CTA
  // of 128 queries over the union of their key blocks (each K/V tile meets twice the
  // rows; a warp skips the tiles its row does not list), chosen when consecutive rows
  // share most blocks. The Hopper kernel runs every 64-query row on its own (two CTAs
  // per SM), 1.7-1.8x the paired rows on an H200.
  bool pair_rows = false;
};
DeviceBlockMask upload(const attn::BlockMask& mask);
// Sets mask.pair_rows from its rows (on the GPU, from up to 2048 sampled pairs of
// consecutive rows): pairs when their union is at most 60% of their summed lengths. A
// paired tile costs ~1.6x a 64-query one (measured on the H200 with disjoint and with
// near-equal rows), so pairing pays below 1 / 1.6 of the sum. GPU selectors call it on
// the masks they build; upload() decides from the host's rows.
void choose_row_pairing(DeviceBlockMask& mask);
// The whole mask on the host, key blocks included.
attn::BlockMask download(const DeviceBlockMask& mask);

// Block-sparse flash attention: visits exactly the key blocks `mask` lists for each
// (batch, head, query block) and applies its rule inside them; query row i has position
// mask.q_offset + i, key slot j position j. Shapes as above with Tq == mask.q_len and
// Tk == mask.kv_len; the mask's batch/heads are 1 (shared) or equal to B / H. D = 256
// needs q_block 64. A row with no allowed key gets a zero output.
void flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                     const DeviceBlockMask& mask, float scale);

// Split-KV decode (FlashDecoding): one query token per sequence, q and o [B, 1, H, D],
// attends to the first kv_len slots of the caches k, v [B, capacity, Hkv, D] (bf16,
// contiguous, kv_len <= capacity, D 64/128/256, H / Hkv <= 16). The keys are split into
// ranges processed in parallel (splits <= 0: enough to fill the GPU) and merged by
// log-sum-exp; the partial results use f32 scratch from the caching allocator.
void decode_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, int64_t kv_len,
                      float scale, int64_t splits = 0);
// The same with the length in GPU memory (i32 [1], read when the kernels run, in
// [1, capacity]), so that one captured CUDA graph serves every length up to the cache's
// capacity: the keys are split for the capacity, and splits past the length finish at
// once.
void decode_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& kv_len,
                      float scale);

// Writes src [T, Hkv, Dh] (f32, heads and tokens may be strided: a part of a fused q/k/v)
// into cache slots [pos, pos + T) of a bf16 cache [capacity, Hkv, Dp] (Dp >= Dh, padded
// with zeros), pos read from GPU memory (i32 [1]) when the kernel runs; slots past the
// capacity are not written.
// With a ring (window > 0: a cache bounded to `sinks` + `window` slots, StreamingLLM's
// sinks and sliding window), position p goes to slot p below sinks and to slot
// sinks + (p - sinks) mod window from there: each position overwrites the one `window`
// before it, which no later query sees. A ring append of T tokens must not wrap onto
// itself (T <= window).
struct KvRing {
  int64_t sinks = 0, window = 0;  // window 0: no ring, slot = position
};
void kv_append(const Tensor& src, const Tensor& cache, const Tensor& position, const KvRing& ring = {});

}  // namespace subq::cuda
