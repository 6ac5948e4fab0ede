// Intel AMX building blocks (src/ops/common/amx.cpp) shared by the bf16 GEMM and the
// attention executor under MatmulPrecision::bf16.
//
// TDPBF16PS multiplies a 16 x 32 bf16 A tile (16 rows, 32 k) by a B tile of 16 k-pairs x
// 16 columns, each element the pair (B[k][n], B[k+1][n]) ("VNNI" order), into a 16 x 16
// f32 C tile. B operands are packed into such tiles first: tile (g, kb), for column group
// g (16 columns) and k block kb (32 k), is kPackedTile bf16 at out + (g * k_blocks + kb) *
// kPackedTile. A operands are plain row-major bf16 rows, k a multiple of 32.
#pragma once

#include <cstdint>

#include "subq/tensor.h"

namespace subq::ops::amx {

constexpr int64_t kTile = 16;                    // rows of A and C; columns of B and C
constexpr int64_t kTileK = 32;                   // bf16 k per A row and per B tile
constexpr int64_t kPackedTile = kTile * kTileK;  // bf16 elements of one packed B tile

// The CPU has AMX-BF16 and Linux granted this process the tile state (asked once).
bool available();

// Loads the one tile configuration every kernel here uses (8 tiles of 16 rows x 64
// bytes); once per thread before the first block_32x32, release() after the last.
void configure();
void release();

// B from a row-major [N, K] matrix whose rows are B's columns (W of x·W^T, K of Q·K^T):
// `groups` column groups (rows >= `rows` zero) by `k_blocks` k blocks (k >= K zero).
void pack_rows(const bf16* src, int64_t ld, int64_t rows, int64_t K, int64_t groups, int64_t k_blocks, bf16* out);

// B from a row-major [K, N] matrix (V of P·V): `groups` column groups (columns >= N zero)
// by `k_blocks` k blocks (rows >= K zero).
void pack_pairs(const bf16* src, int64_t ld, int64_t K, int64_t N, int64_t groups, int64_t k_blocks, bf16* out);

// c[rows, cols] (+)= A · B for a block of up to 32 x 32: A is 32 rows of `a` (row stride
// lda, 32 * k_blocks bf16 each, every row readable), B the packed column groups b0 and
// b1 = b0 + k_blocks * kPackedTile. Partial blocks go through `edge` (32 x 32 f32).
void block_32x32(const bf16* a, int64_t lda, const bf16* b0, int64_t k_blocks, float* c, int64_t ldc, int64_t rows,
                 int64_t cols, bool accumulate, float* edge);

}  // namespace subq::ops::amx
