#include "src/ops/attention/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "src/core/parallel.h"
#include "src/ops/common/convert.h"

namespace subq::attn {

KVCache::KVCache(int64_t kv_heads, int64_t head_dim, int64_t window, int64_t sinks, DType dtype)
    : heads_(kv_heads), dim_(head_dim), window_(std::max<int64_t>(window, 0)), sinks_(window > 0 ? sinks : 0),
      dtype_(dtype) {
  if (kv_heads < 1 || head_dim < 1)
    throw Error("KVCache: kv_heads and head_dim must be >= 1, found " + std::to_string(kv_heads) + ", " +
                std::to_string(head_dim));
  if (sinks < 0) throw Error("KVCache: sinks must be >= 0, found " + std::to_string(sinks));
  if (dtype != DType::f32 && dtype != DType::bf16)
    throw Error(std::string("KVCache: dtype must be f32 or bf16, found ") + dtype_name(dtype));
  // A window cache keeps sinks + window - 1 slots between calls and one more for the
  // decode token, so decoding never reallocates.
  if (bounded()) reserve(sinks_ + window_);
}

void KVCache::reserve(int64_t slots) {
  Tensor k = Tensor::empty(dtype_, {slots, heads_, dim_}), v = Tensor::empty(dtype_, {slots, heads_, dim_});
  const size_t keep = static_cast<size_t>(std::min(len_, slots)) * row_bytes();
  if (keep > 0) {
    std::memcpy(k.mutable_raw_data(), key_bytes(), keep);
    std::memcpy(v.mutable_raw_data(), value_bytes(), keep);
  }
  k_ = std::move(k);
  v_ = std::move(v);
  pos_.resize(static_cast<size_t>(slots));
  pos_.shrink_to_fit();
  capacity_ = slots;
}

void KVCache::reserve_tokens(int64_t tokens) {
  if (!bounded() && tokens > capacity_) reserve(std::max(tokens, 2 * capacity_));
}

void KVCache::append(const float* k, const float* v, int64_t src_stride, int64_t tokens) {
  if (tokens <= 0) return;
  if (next_pos_ + tokens > std::numeric_limits<int32_t>::max())
    throw Error("KVCache: sequence longer than 2^31 - 1 positions");
  if (len_ + tokens > capacity_) reserve(std::max(len_ + tokens, bounded() ? len_ + tokens : 2 * capacity_));
  const size_t row = static_cast<size_t>(row_stride()), rb = row_bytes();
  // A prompt's rows are converted on the pool; a decode step's one row stays on the
  // caller.
  parallel_for(tokens, std::max<int64_t>(1, 8192 / row_stride()), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const size_t slot = static_cast<size_t>(len_ + t);
      std::byte* kd = key_bytes() + slot * rb;
      std::byte* vd = value_bytes() + slot * rb;
      if (dtype_ == DType::bf16) {
        ops::f32_to_bf16(k + t * src_stride, reinterpret_cast<bf16*>(kd), row);
        ops::f32_to_bf16(v + t * src_stride, reinterpret_cast<bf16*>(vd), row);
      } else {
        std::memcpy(kd, k + t * src_stride, rb);
        std::memcpy(vd, v + t * src_stride, rb);
      }
      pos_[slot] = static_cast<int32_t>(next_pos_ + t);
    }
  });
  len_ += tokens;
  next_pos_ += tokens;
}

void KVCache::evict() {
  if (!bounded()) return;
  const int64_t oldest = next_pos_ - (window_ - 1);  // first position still in someone's window
  const size_t rb = row_bytes();
  int64_t kept = 0;
  for (int64_t s = 0; s < len_; ++s) {
    const int32_t p = pos_[static_cast<size_t>(s)];
    if (p >= sinks_ && p < oldest) continue;
    if (kept != s) {
      std::memmove(key_bytes() + static_cast<size_t>(kept) * rb, key_bytes() + static_cast<size_t>(s) * rb, rb);
      std::memmove(value_bytes() + static_cast<size_t>(kept) * rb, value_bytes() + static_cast<size_t>(s) * rb, rb);
      pos_[static_cast<size_t>(kept)] = p;
    }
    ++kept;
  }
  len_ = kept;
  if (capacity_ > sinks_ + window_) reserve(sinks_ + window_);
}

void KVCache::assign(const void* k, const void* v, const int32_t* positions, int64_t slots, int64_t next_pos) {
  if (slots < 0 || (bounded() && slots > sinks_ + window_ - 1))
    throw Error("KVCache: cannot hold " + std::to_string(slots) + " restored slots (window " + std::to_string(window_) +
                ", sinks " + std::to_string(sinks_) + ")");
  for (int64_t s = 0; s < slots; ++s)
    if (positions[s] < 0 || positions[s] >= next_pos || (s > 0 && positions[s] <= positions[s - 1]))
      throw Error("KVCache: restored positions must increase and stay below " + std::to_string(next_pos));
  if (slots > capacity_) reserve(slots);
  const size_t n = static_cast<size_t>(slots) * row_bytes();
  if (n > 0) {
    std::memcpy(key_bytes(), k, n);
    std::memcpy(value_bytes(), v, n);
    std::copy_n(positions, slots, pos_.data());
  }
  len_ = slots;
  next_pos_ = next_pos;
}

size_t KVCache::bytes() const {
  return static_cast<size_t>(bounded() ? capacity_ : len_) * (2 * row_bytes() + sizeof(int32_t));
}

}  // namespace subq::attn
