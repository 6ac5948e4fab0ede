// Flash attention forward on NVIDIA tensor cores (sm_80+): bf16 q/k/v/o, f32 scores,
// online softmax and accumulation; O(T) memory.
#pragma once

#include "subq/tensor.h"

namespace subq::cuda {

// o[B, Tq, H, D] = softmax(q k^T * scale) v for q[B, Tq, H, D], k and v[B, Tk, Hkv, D],
// all bf16, contiguous, in GPU memory. Grouped-query attention: query head h reads kv
// head h / (H / Hkv) (H must be a multiple of Hkv). Head dim D is 64, 128 or 256.
// causal: query i sees keys j <= i + (Tk - Tq), i.e. the queries are the last Tq
// positions of the keys' sequence; a query that sees no key gets a zero output.
void flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, bool causal,
                     float scale);

}  // namespace subq::cuda
