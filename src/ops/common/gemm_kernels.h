// The two kernels behind gemm_xwt (same contract as gemm_xwt in gemm.h, M, N, K > 0):
// gemm_packed_xwt is the cache-blocked, packed GEMM for many rows of x; gemv_xwt streams
// W once from memory and suits the few rows of x of a decode step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "subq/tensor.h"

namespace subq::ops {

void gemm_packed_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w, DType wdt,
                     int64_t ldw, float* y, int64_t ldy, bool accumulate);

void gemv_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w, DType wdt,
              int64_t ldw, float* y, int64_t ldy, bool accumulate);

// y (+)= bf16(x) · W^T on Intel AMX tiles (gemm_amx.cpp): x rounded to bf16, products
// exact, f32 accumulation. Only where amx_available(): the CPU has AMX-BF16 and the OS
// granted this process the tile state.
bool amx_available();
void gemm_amx_bf16_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const bf16* w, int64_t ldw,
                       float* y, int64_t ldy, bool accumulate);

// The same product with AVX512-BF16 dot products (gemm_bf16_dot.cpp), for CPUs that have
// them but no AMX (AMD Zen 4 and later). Only where bf16_dot_available().
bool bf16_dot_available();
void gemm_bf16_dot_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const bf16* w, int64_t ldw,
                       float* y, int64_t ldy, bool accumulate);

// Scratch (packing buffers) from the global aligned operator new[], where the bench's heap
// accounting sees it; 64-byte aligned for whole-vector loads.
struct AlignedFloatsDelete {
  void operator()(float* p) const { ::operator delete[](p, std::align_val_t{64}); }
};
using AlignedFloats = std::unique_ptr<float[], AlignedFloatsDelete>;
inline AlignedFloats allocate_floats(size_t n) { return AlignedFloats(new (std::align_val_t{64}) float[n]); }

}  // namespace subq::ops
