// The flash executor's two products on AMX tiles (flash_amx.cpp), taken under
// MatmulPrecision::bf16 for a bf16 KV cache during prefill: q and P are rounded to bf16
// (as PyTorch's attention on bf16 tensors does), products are exact, sums f32. The
// softmax, the element rule and the running max/sum stay in flash.cpp, in f32.
#pragma once

#include <cstdint>
#include <vector>

#include "subq/tensor.h"

namespace subq::attn::detail {

// Per-thread operands and results of the AMX path, sized once per call.
struct AmxTile {
  std::vector<bf16> q;      // [rows rounded up to 32][head_dim]: the tile's scaled queries
  std::vector<bf16> p;      // [rows rounded up to 32][k_cols]: probabilities of one key block
  std::vector<bf16> kpack;  // K of one key block as B tiles
  std::vector<bf16> vpack;  // V of one key block as B tiles
  std::vector<float> o;     // [rows][head_dim]: P · V of one key block
  int64_t k_cols = 0;       // the key block's padded width rounded up to 32
  void size(int64_t max_rows, int64_t head_dim, int64_t padded_k_block);
};

// Whether prefill over a `kv_dtype` cache with this head dim takes the AMX path.
bool amx_attention(DType kv_dtype, int64_t head_dim);

// Rounds `rows` f32 query rows (row stride ldq) into t.q (zero rows up to a multiple of
// 32) and loads the tile configuration; amx_end releases it.
void amx_begin(AmxTile& t, const float* q, int64_t ldq, int64_t rows, int64_t head_dim);
void amx_end();

// s[r, j] = q_r · k_j for the tile's rows and the keys k[0..kn) (row stride k_stride);
// columns [kn, s_cols) get 0.
void amx_scores(AmxTile& t, int64_t rows, int64_t head_dim, const bf16* k, int64_t k_stride, int64_t kn, float* s,
                int64_t lds, int64_t s_cols);

// t.o[r, :] = sum_j bf16(p[r, j]) v_j over the keys v[0..kn) (row stride v_stride), p the
// f32 probabilities (row stride ldp, columns [kn, p_cols) zero).
void amx_pv(AmxTile& t, int64_t rows, int64_t head_dim, const float* p, int64_t ldp, int64_t p_cols, const bf16* v,
            int64_t v_stride, int64_t kn);

}  // namespace subq::attn::detail
