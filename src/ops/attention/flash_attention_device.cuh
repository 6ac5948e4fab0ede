// Device-side pieces shared by the flash attention kernels (flash_attention.cu: mma.sync,
// sm_80+; flash_attention_sm90.cu: wgmma, sm_90a): the problem's parameters, the mask
// rule, the order of key tiles, and the per-tile masking and online softmax over score
// fragments in the m16n8 accumulator layout (which wgmma's m64nN accumulators share, a
// warp's 16 rows each).
#pragma once

#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "src/core/cuda/mma.cuh"
#include "src/ops/attention/key_range.h"
#include "src/ops/attention/neighborhood_window.h"

namespace subq::cuda::flash {

// ElementRule and Neighborhood (block_mask.h) flattened for the device; positions fit
// in int (sizes are checked below 2^30).
struct DeviceRule {
  bool causal, neighborhood;
  int window_left, window_right, sinks;  // < 0: no such bound
  int ndim;
  int grid[3], kernel[3], dilation[3], stride[3];
  bool dim_causal[3];
};

struct Params {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  __nv_bfloat16* o;
  int tq, tk, heads, kv_heads, group;
  int causal_offset;  // Tk - Tq (dense causal)
  float scale_log2;   // softmax scale * log2(e): scores go through exp2
  // Keys::listed and paired: the BlockMask's CSR rows on the GPU and its rule.
  const int* row_start;
  const int* key_blocks;
  int mask_batch, mask_heads, num_q_blocks;
  int q_block;    // queries per mask row
  int sub_tiles;  // k_block / the kernel's keys per tile
  int q_offset;
  DeviceRule rule;
};

// Which key tiles a CTA visits: all, those at or below the causal diagonal, those its
// BlockMask row lists, or the union of two consecutive mask rows' lists (paired).
enum class Keys { all, causal, listed, paired };

// How far (log2) a score may exceed a row's reference max before the reference moves.
constexpr float kHeadroomLog2 = 8.f;

// Neighborhood::allows (block_mask.cpp) on the device, over the shared window definition.
__device__ inline int nbhd_window_start(const DeviceRule& r, int d, int c) {
  return attn::neighborhood_window_start<int>(r.grid[d], r.kernel[d], r.dilation[d], r.stride[d], r.dim_causal[d], c);
}

__device__ inline bool rule_allows(const DeviceRule& r, int qp, int kp) {
  if (r.causal && kp > qp) return false;
  if (kp >= r.sinks) {
    if (r.window_left >= 0 && kp < qp - r.window_left) return false;
    if (r.window_right >= 0 && kp > qp + r.window_right) return false;
  }
  if (!r.neighborhood) return true;
  for (int d = r.ndim - 1; d >= 0; --d) {
    const int qc = qp % r.grid[d], kc = kp % r.grid[d];
    qp /= r.grid[d];
    kp /= r.grid[d];
    const int off = kc - nbhd_window_start(r, d, qc);
    if (off < 0 || off % r.dilation[d] != 0 || off / r.dilation[d] >= r.kernel[d]) return false;
    if (r.dim_causal[d] && kc > qc) return false;
  }
  return true;
}

// True only if the rule allows every pair of [q0, q1] x [k0, k1] (false is always safe:
// the tile is then tested element by element).
__device__ inline bool rule_covers(const DeviceRule& r, int q0, int q1, int k0, int k1) {
  if (r.neighborhood) return false;
  if (r.causal && k1 > q0) return false;
  if (k1 >= r.sinks) {
    if (r.window_left >= 0 && k0 < q1 - r.window_left) return false;
    if (r.window_right >= 0 && k1 > q0 + r.window_right) return false;
  }
  return true;
}

// A tile of keys to visit: its first key and which of the CTA's mask rows list it (bit 0
// the first, bit 1 the second; 0: no tile left).
struct Tile {
  int start, rows;
};

// A CTA's key tiles in ascending key order, one per next(). Dense: tiles 0 .. n - 1.
// Listed: the merge of mask rows a and b (b empty unless paired), each block sub_tiles
// tiles; the next block index of each row is read from global memory one call ahead, so
// that its latency hides behind a tile of math.
template <Keys kKeys, int kBlockN>
struct KeyTiles {
  int j, n;  // dense
  const int *a, *b;
  int na, nb, ia, ib, head_a, head_b, sub, sub_tiles;

  __device__ Tile next() {
    if constexpr (kKeys == Keys::all || kKeys == Keys::causal) {
      return j < n ? Tile{kBlockN * j++, 3} : Tile{0, 0};
    } else {
      const int blk = min(head_a, head_b);
      if (blk == INT_MAX) return {0, 0};
      const int rows = (head_a == blk ? 1 : 0) | (head_b == blk ? 2 : 0);
      const Tile t{(blk * sub_tiles + sub) * kBlockN, rows};
      if (++sub == sub_tiles) {
        sub = 0;
        if (rows & 1) head_a = ++ia < na ? a[ia] : INT_MAX;
        if (rows & 2) head_b = ++ib < nb ? b[ib] : INT_MAX;
      }
      return t;
    }
  }
  // How many tiles next() hands out in all (not for paired rows, whose shared blocks
  // count once).
  __device__ int count() const {
    static_assert(kKeys != Keys::paired);
    if constexpr (kKeys == Keys::all || kKeys == Keys::causal) return n;
    else return na * sub_tiles;
  }
};


// The key tiles of the CTA of query rows m0 .. m0 + block_m of head h, batch b: dense
// ones up to the last key its rows may see, or those of the mask row holding query m0
// (the CTA's rows may be part of it), and of the next one too when paired (which may not
// exist).
template <Keys kKeys, int kBlockN>
__device__ __forceinline__ KeyTiles<kKeys, kBlockN> cta_key_tiles(const Params& p, int b, int h, int m0,
                                                                   int block_m) {
  KeyTiles<kKeys, kBlockN> tiles{};
  if constexpr (kKeys == Keys::listed || kKeys == Keys::paired) {
    const int row0 = m0 / p.q_block;
    const int r = ((p.mask_batch == 1 ? 0 : b) * p.mask_heads + (p.mask_heads == 1 ? 0 : h)) * p.num_q_blocks + row0;
    tiles.a = p.key_blocks + p.row_start[r];
    tiles.na = p.row_start[r + 1] - p.row_start[r];
    tiles.b = tiles.a + tiles.na;
    tiles.nb = kKeys == Keys::paired && row0 + 1 < p.num_q_blocks ? p.row_start[r + 2] - p.row_start[r + 1] : 0;
    tiles.head_a = tiles.na > 0 ? tiles.a[0] : INT_MAX;
    tiles.head_b = tiles.nb > 0 ? tiles.b[0] : INT_MAX;
    tiles.sub_tiles = p.sub_tiles;
  } else {
    const int key_end = kKeys == Keys::causal ? min(p.tk, m0 + block_m + p.causal_offset) : p.tk;
    tiles.n = key_end > 0 ? (key_end + kBlockN - 1) / kBlockN : 0;
  }
  return tiles;
}

// Row pointers of one CTA: q at its first query row of head h, k and v at row 0 of the
// head's KV head, with their row strides (elements).
struct HeadRows {
  const __nv_bfloat16 *q, *k, *v;
  int64_t q_ld, kv_ld;
};
template <int D>
__device__ __forceinline__ HeadRows head_rows(const Params& p, int b, int h, int m0) {
  const int64_t q_ld = static_cast<int64_t>(p.heads) * D, kv_ld = static_cast<int64_t>(p.kv_heads) * D;
  const int64_t kv = static_cast<int64_t>(b) * p.tk * kv_ld + (h / p.group) * D;
  return {p.q + (static_cast<int64_t>(b) * p.tq + m0) * q_ld + h * D, p.k + kv, p.v + kv, q_ld, kv_ld};
}

// Sets to -inf the scores of an edge tile (keys [n0, n0 + kBlockN) not all allowed) that
// lie past the keys, above the causal diagonal, or outside the mask's rule, for the
// kMTiles m16 tiles of rows from `row0` (this warp's first row). A neighborhood rule is
// tested per score by its own loop: inside the key-range loop its divisions made the
// edge tiles' code ~15k instructions, most never run, and the instruction-cache misses
// on that code took 30% of a window mask's time (ncu, H200). Kernels built without it
// (kNeighborhood false) must not be given a neighborhood rule.
template <Keys kKeys, int kMTiles, int kBlockN, bool kNeighborhood = true>
__device__ __forceinline__ void mask_edge_tile(float (&s)[kMTiles][kBlockN / 8][4], const Params& p, int row0, int n0) {
  const int lane = threadIdx.x & 31;
  constexpr bool kRule = kKeys == Keys::listed || kKeys == Keys::paired;
  // Calls masked(mt, r, row, col) for each of the thread's scores (m16 tile mt, row half
  // r); true sets the score to -inf.
  const auto each_score = [&](auto&& masked) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = row0 + mt * 16 + (lane >> 2) + r * 8;
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt)
#pragma unroll
          for (int c = 2 * r; c < 2 * r + 2; ++c) {
            const int col = n0 + nt * 8 + ((lane & 3) << 1) + (c & 1);
            if (masked(mt, r, row, col)) s[mt][nt][c] = -INFINITY;
          }
      }
  };
  if constexpr (kRule && kNeighborhood) {
    if (p.rule.neighborhood) {
      each_score([&](int, int, int row, int col) { return col >= p.tk || !rule_allows(p.rule, p.q_offset + row, col); });
      return;
    }
  }
  // Each row's allowed keys: a range, from the row alone.
  const auto range_of = [&](int row) {
    attn::KeyRange range{p.tk - 1, 0, 0, INT_MAX};
    if constexpr (kKeys == Keys::causal) range.last = min(range.last, row + p.causal_offset);
    if constexpr (kRule)
      range = attn::key_range(p.rule.causal, p.rule.window_left, p.rule.window_right, p.rule.sinks, p.q_offset + row,
                              p.tk);
    return range;
  };
  attn::KeyRange ranges[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) ranges[mt][r] = range_of(row0 + mt * 16 + (lane >> 2) + r * 8);
  each_score([&](int mt, int r, int, int col) { return !ranges[mt][r].allows(col); });
}

// One tile's online softmax step: the scores become exp2(s * scale_log2 - max) in
// place, each row's sum absorbs them, and corr is the factor the row's accumulator must
// be multiplied by. Returns whether any of the thread's rows moved its reference max.
template <int kMTiles, int kBlockN>
__device__ __forceinline__ bool online_softmax(float (&s)[kMTiles][kBlockN / 8][4], float (&row_max)[kMTiles][2],
                                               float (&row_sum)[kMTiles][2], float (&corr)[kMTiles][2],
                                               float scale_log2) {
  bool max_moved = false;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // The reference max moves only when a score would exceed it by more than
      // 2^kHeadroom: softmax is exact for any reference, P stays below 2^8, and most
      // tiles, early ones included, then need no rescale of the accumulator.
      const float tile_max = mx * scale_log2;
      const bool move = tile_max > row_max[mt][r] + kHeadroomLog2;
      const float new_max = move ? tile_max : row_max[mt][r];
      // A row with no visible key so far keeps max -inf; exp2 then gives zeros, not NaN.
      const float base = new_max == -INFINITY ? 0.f : new_max;
      corr[mt][r] = move ? fast_exp2(row_max[mt][r] - base) : 1.f;
      max_moved |= move;
      row_max[mt][r] = new_max;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt)
#pragma unroll
        for (int c = 2 * r; c < 2 * r + 2; ++c) {
          s[mt][nt][c] = fast_exp2(fmaf(s[mt][nt][c], scale_log2, -base));
          sum += s[mt][nt][c];
        }
      row_sum[mt][r] = row_sum[mt][r] * corr[mt][r] + sum;
    }
  return max_moved;
}

// 1 / the sum of a row whose four lanes each hold part of it (0 for a row that saw no
// key), from one lane's part.
__device__ __forceinline__ float inverse_row_sum(float part) {
  part += __shfl_xor_sync(0xffffffffu, part, 1);
  part += __shfl_xor_sync(0xffffffffu, part, 2);
  return part > 0.f ? 1.f / part : 0.f;
}

// The final normalisation: each of the thread's rows (kMTiles m16 tiles from row0) of
// acc divided by its row's sum (0 for a row that saw no key), written as bf16 to o.
template <int kMTiles, int D>
__device__ __forceinline__ void store_output(const float (&acc)[kMTiles][D / 8][4], const float (&row_sum)[kMTiles][2],
                                             __nv_bfloat16* o, int64_t o_ld, int row0, int tq) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float inv = inverse_row_sum(row_sum[mt][r]);
      const int row = row0 + mt * 16 + (lane >> 2) + r * 8;
      if (row >= tq) continue;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        const int col = dt * 8 + ((lane & 3) << 1);
        *reinterpret_cast<__nv_bfloat162*>(o + row * o_ld + col) =
            __floats2bfloat162_rn(acc[mt][dt][2 * r] * inv, acc[mt][dt][2 * r + 1] * inv);
      }
    }
}

}  // namespace subq::cuda::flash
