// The kernels behind gemm_xwt (same contract as gemm_xwt in gemm.h, M, N, K > 0):
// gemm_packed_xwt is the cache-blocked, packed GEMM for many rows of x; gemv_xwt streams
// W once from memory and suits the few rows of x of a decode step; the bf16 kernels below
// serve MatmulPrecision::bf16.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <span>

#include "src/ops/common/gemm.h"
#include "subq/tensor.h"

namespace subq::ops {

void gemm_packed_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w, DType wdt,
                     int64_t ldw, float* y, int64_t ldy, bool accumulate);

void gemv_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w, DType wdt,
              int64_t ldw, float* y, int64_t ldy, bool accumulate);
// The GEMV of several weights of dtype wdt against the same x, their rows split between
// the threads as one run.
void gemv_xwt_group(int64_t M, int64_t K, const float* x, int64_t ldx, DType wdt, std::span<const WeightOutput> outputs,
                    bool accumulate);

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

// How the bf16 GEMMs split over threads: parts own disjoint column ranges (whole blocks
// of col_block columns), up to four per thread; W narrower than two blocks per thread also
// splits by rows (parts of at least min_row_blocks blocks of row_block rows), so that every
// thread gets work.
struct GemmParts {
  int64_t M, N, col_block, row_block, col_blocks, row_blocks, col_parts, row_parts;
  GemmParts(int64_t M_, int64_t N_, int64_t col_block_, int64_t row_block_, int64_t min_row_blocks, int64_t threads)
      : M(M_), N(N_), col_block(col_block_), row_block(row_block_) {
    col_blocks = (N + col_block - 1) / col_block;
    row_blocks = (M + row_block - 1) / row_block;
    col_parts = std::min(col_blocks, 4 * threads);
    row_parts = col_blocks >= 2 * threads ? 1
                                          : std::clamp<int64_t>((4 * threads + col_parts - 1) / col_parts, 1,
                                                                std::max<int64_t>(1, row_blocks / min_row_blocks));
  }
  int64_t count() const { return col_parts * row_parts; }
  // Part p's columns [c0, c1) and rows [r0, r1); empty where there is too little work.
  void range(int64_t p, int64_t& c0, int64_t& c1, int64_t& r0, int64_t& r1) const {
    const int64_t cp = p % col_parts, rp = p / col_parts;
    c0 = col_blocks * cp / col_parts * col_block;
    c1 = std::min(N, col_blocks * (cp + 1) / col_parts * col_block);
    r0 = row_blocks * rp / row_parts * row_block;
    r1 = std::min(M, row_blocks * (rp + 1) / row_parts * row_block);
  }
};

// Scratch (packing buffers) from the global aligned operator new[], where the bench's heap
// accounting sees it; 64-byte aligned for whole-vector loads.
struct AlignedFloatsDelete {
  void operator()(float* p) const { ::operator delete[](p, std::align_val_t{64}); }
};
using AlignedFloats = std::unique_ptr<float[], AlignedFloatsDelete>;
inline AlignedFloats allocate_floats(size_t n) { return AlignedFloats(new (std::align_val_t{64}) float[n]); }

}  // namespace subq::ops
