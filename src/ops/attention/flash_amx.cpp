#include "src/ops/attention/flash_amx.h"

#include <algorithm>

#include "src/ops/common/amx.h"
#include "src/ops/common/convert.h"
#include "subq/ops.h"

namespace subq::attn::detail {
namespace {

using ops::amx::kPackedTile;
using ops::amx::kTile;
using ops::amx::kTileK;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// c[rows, cols] = a · packed B, in 32 x 32 blocks (a: 32-row-padded, lda elements apart).
void product(const bf16* a, int64_t lda, const bf16* packed, int64_t k_blocks, float* c, int64_t ldc, int64_t rows,
             int64_t cols) {
  alignas(64) float edge[4 * kTile * kTile];
  for (int64_t m = 0; m < rows; m += 2 * kTile)
    for (int64_t j = 0; j < cols; j += 2 * kTile)
      ops::amx::block_32x32(a + m * lda, lda, packed + (j / kTile) * k_blocks * kPackedTile, k_blocks, c + m * ldc + j,
                            ldc, std::min(2 * kTile, rows - m), std::min(2 * kTile, cols - j), false, edge);
}

}  // namespace

void AmxTile::size(int64_t max_rows, int64_t head_dim, int64_t padded_k_block) {
  const int64_t rows = round_up(max_rows, 2 * kTile);
  k_cols = round_up(padded_k_block, 2 * kTile);
  q.assign(static_cast<size_t>(rows * head_dim), bf16{});
  p.assign(static_cast<size_t>(rows * k_cols), bf16{});
  kpack.assign(static_cast<size_t>(k_cols * head_dim), bf16{});
  vpack.assign(static_cast<size_t>(k_cols * head_dim), bf16{});
  o.assign(static_cast<size_t>(max_rows * head_dim), 0.f);
}

bool amx_attention(DType kv_dtype, int64_t head_dim) {
  return kv_dtype == DType::bf16 && head_dim % kTileK == 0 && matmul_precision() == MatmulPrecision::bf16 &&
         ops::amx::available();
}

void amx_begin(AmxTile& t, const float* q, int64_t ldq, int64_t rows, int64_t head_dim) {
  const int64_t padded = round_up(rows, 2 * kTile);
  for (int64_t r = 0; r < rows; ++r)
    ops::f32_to_bf16(q + r * ldq, t.q.data() + r * head_dim, static_cast<size_t>(head_dim));
  std::fill(t.q.begin() + rows * head_dim, t.q.begin() + padded * head_dim, bf16{});
  ops::amx::configure();
}

void amx_end() { ops::amx::release(); }

void amx_scores(AmxTile& t, int64_t rows, int64_t head_dim, const bf16* k, int64_t k_stride, int64_t kn, float* s,
                int64_t lds, int64_t s_cols) {
  const int64_t k_blocks = head_dim / kTileK;
  // Keys are B's columns: whole pairs of 16-key groups up to the rounded block width.
  ops::amx::pack_rows(k, k_stride, kn, head_dim, t.k_cols / kTile, k_blocks, t.kpack.data());
  product(t.q.data(), head_dim, t.kpack.data(), k_blocks, s, lds, rows, s_cols);
}

void amx_pv(AmxTile& t, int64_t rows, int64_t head_dim, const float* p, int64_t ldp, int64_t p_cols, const bf16* v,
            int64_t v_stride, int64_t kn) {
  const int64_t padded = round_up(rows, 2 * kTile), k_blocks = t.k_cols / kTileK;
  for (int64_t r = 0; r < rows; ++r) {
    bf16* dst = t.p.data() + r * t.k_cols;
    ops::f32_to_bf16(p + r * ldp, dst, static_cast<size_t>(p_cols));
    std::fill(dst + p_cols, dst + t.k_cols, bf16{});
  }
  std::fill(t.p.begin() + rows * t.k_cols, t.p.begin() + padded * t.k_cols, bf16{});
  ops::amx::pack_pairs(v, v_stride, kn, head_dim, head_dim / kTile, k_blocks, t.vpack.data());
  product(t.p.data(), t.k_cols, t.vpack.data(), k_blocks, t.o.data(), head_dim, rows, head_dim);
}

}  // namespace subq::attn::detail
