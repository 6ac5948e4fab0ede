// AVX512-BF16 building blocks (src/ops/common/bf16_dot.cpp) shared by the bf16 GEMM and
// the attention executor under MatmulPrecision::bf16, on CPUs without AMX (AMD Zen 4 and
// later).
//
// VDPBF16PS multiplies 16 pairs of bf16 by 16 other pairs and adds both products of each
// pair to one of 16 f32 sums: twice the products of an f32 FMA. B operands are packed into
// panels of kPanel columns whose k pairs are 32-bit words: panel p, pair kp, column n is
// out[(p * kc + kp) * kPanel + n] = (B[2 kp][n], B[2 kp + 1][n]). A operands are plain
// row-major bf16 rows read as 32-bit pairs (k padded to even with a zero).
#pragma once

#include <cstdint>

#include "subq/tensor.h"

namespace subq::ops::bf16_dot {

constexpr int64_t kPanel = 48;  // 3 vectors of 16 columns

// The CPU has AVX-512F and AVX512-BF16.
bool available();

// B from a row-major [N, K] matrix whose rows are B's columns (W of x·W^T, K of Q·K^T):
// columns [0, cols) and pairs [kp0, kp0 + kc), zeros past cols and past K.
void pack_rows(const bf16* src, int64_t ld, int64_t cols, int64_t K, int64_t kp0, int64_t kc, uint32_t* out);

// B from a row-major [K, N] matrix (V of P·V): rows [0, K) paired, kc pairs (zeros past
// K), columns [0, N) (zeros past N, to the panel's width).
void pack_pairs(const bf16* src, int64_t ld, int64_t K, int64_t N, int64_t kc, uint32_t* out);

// c[rows, cols] (+)= A · B over kc pairs: A rows `a` lda pairs apart, B packed panels.
void product(const uint32_t* a, int64_t lda, const uint32_t* packed, int64_t kc, float* c, int64_t ldc, int64_t rows,
             int64_t cols, bool accumulate);

}  // namespace subq::ops::bf16_dot
