// One sequence's key/value cache: rows [slots, kv_heads, head_dim] in f32 or bf16, each
// slot with its absolute position (sorted ascending). bf16 halves the bytes decode reads
// per key; appended f32 rows are rounded to nearest even. Unbounded caches grow with the
// sequence. Window caches (StreamingLLM) keep the first `sinks` positions and the most
// recent window - 1, exactly what the next query needs under a causal window of `window`
// keys, so their size is bounded by sinks + window slots whatever the sequence length.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "subq/tensor.h"

namespace subq::attn {

class KVCache {
 public:
  // window <= 0: keep everything (sinks ignored). dtype: f32 or bf16 (else Error).
  KVCache(int64_t kv_heads, int64_t head_dim, int64_t window = 0, int64_t sinks = 0, DType dtype = DType::f32);

  DType dtype() const { return dtype_; }
  int64_t slots() const { return len_; }
  int64_t next_position() const { return next_pos_; }
  int64_t row_stride() const { return heads_ * dim_; }  // elements of dtype()
  bool bounded() const { return window_ > 0; }
  // Rows of dtype() elements, row_stride() apart.
  const void* keys() const { return k_.defined() ? k_.raw_data() : nullptr; }
  const void* values() const { return v_.defined() ? v_.raw_data() : nullptr; }
  const int32_t* positions() const { return pos_.data(); }

  // Appends `tokens` rows at positions next_position()...; k and v rows are f32
  // [kv_heads, head_dim] contiguous, `row_stride` elements apart.
  void append(const float* k, const float* v, int64_t row_stride, int64_t tokens);
  // Window caches drop the slots no future query can see and return to their bound.
  void evict();
  // Room for `tokens` slots in all (unbounded caches; window caches are bounded already):
  // appending up to there then never regrows, which copies the whole cache. Like append,
  // it at least doubles a cache it grows, so that a reservation per decoded token costs
  // amortised O(1), not a copy each.
  void reserve_tokens(int64_t tokens);
  // Replaces the contents (restoring a saved state): `slots` rows of keys and values in
  // dtype(), and their positions (strictly increasing, below next_pos). Throws Error if
  // they do not fit this cache (more slots than a window cache keeps, unsorted or
  // out-of-range positions).
  void assign(const void* k, const void* v, const int32_t* positions, int64_t slots, int64_t next_pos);
  // Bytes of keys, values and positions: the fixed reservation of a window cache, the
  // slots held by an unbounded one.
  size_t bytes() const;

 private:
  void reserve(int64_t slots);
  size_t row_bytes() const { return static_cast<size_t>(row_stride()) * dtype_size(dtype_); }
  std::byte* key_bytes() const { return static_cast<std::byte*>(k_.mutable_raw_data()); }
  std::byte* value_bytes() const { return static_cast<std::byte*>(v_.mutable_raw_data()); }

  int64_t heads_, dim_, window_, sinks_;
  DType dtype_;
  int64_t len_ = 0, capacity_ = 0, next_pos_ = 0;
  // [capacity, kv_heads, head_dim] tensors, so that a large cache gets the huge pages
  // tensor storage asks for: decode walks each head's rows a token apart, and on 4 KiB
  // pages nearly every key costs a TLB walk.
  Tensor k_, v_;
  std::vector<int32_t> pos_;
};

}  // namespace subq::attn
