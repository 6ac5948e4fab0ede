#include "src/ops/attention/flash_bf16.h"

#include <algorithm>

#include "src/ops/common/amx.h"
#include "src/ops/common/bf16_dot.h"
#include "src/ops/common/convert.h"
#include "subq/ops.h"

namespace subq::attn::detail {
namespace {

using ops::amx::kPackedTile;
using ops::amx::kTile;
using ops::amx::kTileK;
using ops::bf16_dot::kPanel;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

bool on_amx() { return ops::amx::available(); }

bf16* as_bf16(std::vector<uint32_t>& v) { return reinterpret_cast<bf16*>(v.data()); }
const uint32_t* as_pairs(const std::vector<bf16>& v) { return reinterpret_cast<const uint32_t*>(v.data()); }

// c[rows, cols] = a · packed B on AMX, in 32 x 32 blocks (a: 32-row-padded, lda elements apart).
void amx_product(const bf16* a, int64_t lda, const bf16* packed, int64_t k_blocks, float* c, int64_t ldc,
                 int64_t rows, int64_t cols) {
  alignas(64) float edge[4 * kTile * kTile];
  for (int64_t m = 0; m < rows; m += 2 * kTile)
    for (int64_t j = 0; j < cols; j += 2 * kTile)
      ops::amx::block_32x32(a + m * lda, lda, packed + (j / kTile) * k_blocks * kPackedTile, k_blocks, c + m * ldc + j,
                            ldc, std::min(2 * kTile, rows - m), std::min(2 * kTile, cols - j), false, edge);
}

}  // namespace

void Bf16Tile::size(int64_t max_rows, int64_t head_dim, int64_t padded_k_block) {
  const int64_t rows = round_up(max_rows, 2 * kTile);
  k_cols = round_up(padded_k_block, 2 * kTile);
  q.assign(static_cast<size_t>(rows * head_dim), bf16{});
  p.assign(static_cast<size_t>(rows * k_cols), bf16{});
  // AMX tiles hold k_cols x head_dim bf16; dot panels round their columns (keys for K,
  // head dims for V) up to kPanel.
  const int64_t words = std::max(round_up(k_cols, kPanel) * head_dim, k_cols * round_up(head_dim, kPanel)) / 2;
  kpack.assign(static_cast<size_t>(words), 0u);
  vpack.assign(static_cast<size_t>(words), 0u);
  o.assign(static_cast<size_t>(max_rows * head_dim), 0.f);
}

bool bf16_attention(DType kv_dtype, int64_t head_dim) {
  return kv_dtype == DType::bf16 && head_dim % kTileK == 0 && matmul_precision() == MatmulPrecision::bf16 &&
         (ops::amx::available() || ops::bf16_dot::available());
}

void bf16_begin(Bf16Tile& t, const float* q, int64_t ldq, int64_t rows, int64_t head_dim) {
  const int64_t padded = round_up(rows, 2 * kTile);
  for (int64_t r = 0; r < rows; ++r)
    ops::f32_to_bf16(q + r * ldq, t.q.data() + r * head_dim, static_cast<size_t>(head_dim));
  std::fill(t.q.begin() + rows * head_dim, t.q.begin() + padded * head_dim, bf16{});
  if (on_amx()) ops::amx::configure();
}

void bf16_end() {
  if (on_amx()) ops::amx::release();
}

void bf16_scores(Bf16Tile& t, int64_t rows, int64_t head_dim, const bf16* k, int64_t k_stride, int64_t kn, float* s,
                 int64_t lds, int64_t s_cols) {
  if (on_amx()) {
    const int64_t k_blocks = head_dim / kTileK;
    // Keys are B's columns: whole pairs of 16-key groups up to the rounded block width.
    ops::amx::pack_rows(k, k_stride, kn, head_dim, t.k_cols / kTile, k_blocks, as_bf16(t.kpack));
    amx_product(t.q.data(), head_dim, as_bf16(t.kpack), k_blocks, s, lds, rows, s_cols);
    return;
  }
  const int64_t pairs = head_dim / 2;
  ops::bf16_dot::pack_rows(k, k_stride, kn, head_dim, 0, pairs, t.kpack.data());
  ops::bf16_dot::product(as_pairs(t.q), pairs, t.kpack.data(), pairs, s, lds, rows, kn, false);
  for (int64_t r = 0; r < rows; ++r) std::fill(s + r * lds + kn, s + r * lds + s_cols, 0.f);
}

void bf16_pv(Bf16Tile& t, int64_t rows, int64_t head_dim, const float* p, int64_t ldp, int64_t p_cols, const bf16* v,
             int64_t v_stride, int64_t kn) {
  const int64_t padded = round_up(rows, 2 * kTile);
  for (int64_t r = 0; r < rows; ++r) {
    bf16* dst = t.p.data() + r * t.k_cols;
    ops::f32_to_bf16(p + r * ldp, dst, static_cast<size_t>(p_cols));
    std::fill(dst + p_cols, dst + t.k_cols, bf16{});
  }
  std::fill(t.p.begin() + rows * t.k_cols, t.p.begin() + padded * t.k_cols, bf16{});
  if (on_amx()) {
    const int64_t k_blocks = t.k_cols / kTileK;
    ops::amx::pack_pairs(v, v_stride, kn, head_dim, head_dim / kTile, k_blocks, as_bf16(t.vpack));
    amx_product(t.p.data(), t.k_cols, as_bf16(t.vpack), k_blocks, t.o.data(), head_dim, rows, head_dim);
    return;
  }
  const int64_t pairs = (kn + 1) / 2;
  ops::bf16_dot::pack_pairs(v, v_stride, kn, head_dim, pairs, t.vpack.data());
  ops::bf16_dot::product(as_pairs(t.p), t.k_cols / 2, t.vpack.data(), pairs, t.o.data(), head_dim, rows, head_dim,
                         false);
}

}  // namespace subq::attn::detail
