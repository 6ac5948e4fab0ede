// Per-thread scratch memory kept from call to call, for kernels that pack operands or
// hold tiles. A buffer allocated (and zero-filled) per call costs its writes every time,
// and when malloc serves it as fresh pages, a page fault per 4 KiB and an unmap after: the
// bf16 GEMM's per-part vectors spent 8-9% of a 16-thread Llama-160M prefill's samples
// zero-filling on a Xeon VM.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <new>
#include <utility>

namespace subq {

// Buffers above this many bytes are not kept past their use: a one-off product of a
// million rows must not pin its workspace for the life of the thread.
constexpr size_t kKeptScratchBytes = size_t{32} << 20;

// `n` uninitialised Ts, 64-byte aligned, for the calling thread while this object lives.
// Tag names the use; the thread's buffer for a tag grows to the largest request and is
// reused by the next one. A second live Scratch of the same tag on one thread, or a
// request above kKeptScratchBytes, gets a buffer of its own, freed with the object.
template <class Tag, class T>
class Scratch {
 public:
  explicit Scratch(size_t n) : slot_(slot()) {
    const size_t bytes = (n > 0 ? n : 1) * sizeof(T);
    if (slot_.in_use || bytes > kKeptScratchBytes) {
      owned_.reset(allocate(bytes));
      data_ = reinterpret_cast<T*>(owned_.get());
      return;
    }
    if (slot_.bytes < bytes) {
      slot_.data.reset();
      slot_.data.reset(allocate(bytes));
      slot_.bytes = bytes;
    }
    slot_.in_use = true;
    data_ = reinterpret_cast<T*>(slot_.data.get());
  }
  ~Scratch() {
    if (!owned_) slot_.in_use = false;
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  T* data() const { return data_; }

 private:
  struct Delete {
    void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  using Bytes = std::unique_ptr<std::byte[], Delete>;
  struct Slot {
    Bytes data;
    size_t bytes = 0;
    bool in_use = false;
  };
  static Slot& slot() {
    thread_local Slot s;
    return s;
  }
  // operator new[] (not mmap) so the bench's heap accounting sees it.
  static std::byte* allocate(size_t bytes) { return new (std::align_val_t{64}) std::byte[bytes]; }

  Slot& slot_;
  Bytes owned_;
  T* data_ = nullptr;
};

// One array of a ZeroedPieces: `size` floats.
struct Piece {
  float* ptr = nullptr;
  size_t size = 0;
  float* data() const { return ptr; }
  float& operator[](int64_t i) const { return ptr[i]; }
};

// A kernel's workspace of several float arrays, zeroed, from one Scratch of the calling
// thread: each piece starts on 64 bytes. A decode step's work per call is microseconds,
// where a dozen vectors allocated and freed per call showed.
template <class Tag>
class ZeroedPieces {
 public:
  // Points each piece at its floats.
  explicit ZeroedPieces(std::initializer_list<std::pair<Piece*, int64_t>> pieces) : memory_(floats(pieces)) {
    float* at = memory_.data();
    for (const auto& [piece, n] : pieces) {
      *piece = {at, static_cast<size_t>(n)};
      at += padded(n);
    }
    std::fill(memory_.data(), at, 0.f);
  }

 private:
  static size_t padded(int64_t n) { return static_cast<size_t>((n + 15) / 16 * 16); }
  static size_t floats(std::initializer_list<std::pair<Piece*, int64_t>> pieces) {
    size_t total = 0;
    for (const auto& piece : pieces) total += padded(piece.second);
    return total;
  }
  Scratch<Tag, float> memory_;
};

}  // namespace subq
