// Strided access to [B, T, heads, d] activations shared between H output heads
// (GQA / Mamba-2 groups: output head h reads input head h / (H / heads)). Lets the
// kernels read q/k/v straight out of a projection's output without copies.
#pragma once

#include <algorithm>
#include <cstdint>

#include "subq/tensor.h"

namespace subq::ops {

struct HeadRows {
  const float* base = nullptr;
  int64_t sb = 0, st = 0, sh = 0;  // element strides of batch, time, head
  int64_t group = 1;               // output heads per input head
  const float* at(int64_t b, int64_t t, int64_t h) const { return base + b * sb + t * st + (h / group) * sh; }
};

// Checks that t is f32 [B, T, heads, d] with a contiguous last dimension and that
// `heads` divides H; `what` names the argument in the error.
HeadRows head_rows(const Tensor& t, const char* what, int64_t B, int64_t T, int64_t H, int64_t d);
// Same for a writable output with exactly H heads.
struct HeadRowsOut {
  float* base = nullptr;
  int64_t sb = 0, st = 0, sh = 0;
  float* at(int64_t b, int64_t t, int64_t h) const { return base + b * sb + t * st + h * sh; }
};
HeadRowsOut head_rows_out(const Tensor& t, const char* what, int64_t B, int64_t T, int64_t H, int64_t d);

// Per-token scalars [B, T, H] (gates, beta), any strides.
struct TokenScalars {
  const float* base = nullptr;
  int64_t sb = 0, st = 0, sh = 0;
  float at(int64_t b, int64_t t, int64_t h) const { return base[b * sb + t * st + h * sh]; }
};
TokenScalars token_scalars(const Tensor& t, const char* what, int64_t B, int64_t T, int64_t H);

// Throws "`what`: expected values <= 0, got X" for the first value of rows [B, T, H, n]
// (log-decays) that is not <= 0, NaN included. The scan runs on the pool's threads: a
// prefill's vector decays are as many values as its keys, too many for the calling thread
// alone while the rest wait.
void check_rows_at_most_zero(const HeadRows& rows, int64_t B, int64_t T, int64_t H, int64_t n, const char* what);

// Asks for a row of n floats to be brought into L2 ahead of its use: a head's rows are a
// whole token's heads apart, further than the hardware prefetchers follow.
inline void prefetch_row_to_l2(const float* row, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(row + i, 0, 2);
}

// A head's state [dk, cols] copied to rows of `padded` >= cols floats (the kernels'
// aligned layout, zeros after cols) and back.
inline void pad_state_rows(const float* st, int64_t dk, int64_t cols, int64_t padded, float* out) {
  for (int64_t d = 0; d < dk; ++d) {
    std::copy_n(st + d * cols, cols, out + d * padded);
    std::fill(out + d * padded + cols, out + (d + 1) * padded, 0.f);
  }
}
inline void unpad_state_rows(const float* in, int64_t dk, int64_t cols, int64_t padded, float* st) {
  for (int64_t d = 0; d < dk; ++d) std::copy_n(in + d * padded, cols, st + d * cols);
}

// Runs fn(state) on one head's state [dk, cols] as rows of `padded` floats: in place when
// cols == padded, else through `scratch` (dk * padded floats).
template <class F>
void with_padded_state(float* st, int64_t dk, int64_t cols, int64_t padded, float* scratch, F&& fn) {
  if (cols == padded) {
    fn(st);
    return;
  }
  pad_state_rows(st, dk, cols, padded, scratch);
  fn(scratch);
  unpad_state_rows(scratch, dk, cols, padded, st);
}

}  // namespace subq::ops
