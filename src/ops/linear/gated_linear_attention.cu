// Chunked gated linear attention on tensor cores, two kernels per call (three with the
// vector gate). With chunks of C = 64 tokens, G_i the cumulative log2-gate of token i
// inside its chunk (G_i <= 0, non-increasing), w_j the value scale of token j (SSD's dt;
// 1 otherwise) and S_c the state when chunk c starts:
//   state pass  S_{c+1} = 2^{G_last} S_c + sum_j (k_j 2^{G_last - G_j} w_j) v_j^T
//   output      o_i = scale (2^{G_i} q_i^T S_c + sum_{j<=i} 2^{G_i - G_j} w_j (q_i . k_j) v_j)
// Every exponent is <= 0: nothing overflows however long the decay runs.
// Kernel 1 (chunk_state_kernel): one CTA per (64 x 64 tile of S, head, batch) walks the
// chunks in order (the tiles of S evolve independently), keeps its tile in f32 mma
// accumulators, stores each S_c as bf16 to a workspace, and writes the final state in f32. K^T arrives through ldmatrix.trans from
// the token-major K tile, and the per-token factor 2^{G_last - G_j} w_j is applied to
// those A fragments in registers (the factor belongs to the k index of the product).
// Kernel 2 (chunk_output_kernel): one CTA per (chunk, head, batch), fully parallel; warp w
// owns query rows 16w..16w+15, so it needs only key blocks 0..w of the causal product.
// The decayed, masked scores stay in registers and become the A fragments of P V, as in
// flash_attention.cu. Shared tiles use the same XOR swizzle (16-byte chunk ^ row % 8).
// GLA's vector gate (a different decay per dk index): the same equations per dk index, with
// G_i a vector; a first kernel writes the cumulative gates, kernel 1 applies the factor
// per (row, token) of K^T, and kernel 2 (vector_gate_output_kernel) folds the decays into
// its operands.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/core/cuda/mma.cuh"
#include "src/ops/linear/gated_linear_attention_cuda.h"

namespace subq::cuda {
namespace {

constexpr int kChunk = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 64;  // kernel 1's tile of the state: 64 dk rows x 64 dv columns
constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFull = 0xffffffffu;

struct Params {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  // log a_t = gate_tok[b, t, h] * gate_head[h]; a missing factor is 1, both missing: a = 1.
  const float* gate_tok;
  const float* gate_head;
  const float* gate_vec;     // GLA's vector gate: log a [B, T, H, dk], or null
  float* gate_cum;           // its cumulative log2-gates within each chunk (workspace, same layout)
  const float* value_scale;  // [B, T, H] or null
  const float* skip;         // [H] or null: o += skip_h v (SSD's D)
  float* state;              // [B, H, dk, dv]
  __nv_bfloat16* chunk_states;  // workspace [B, H, nc, dk, dv]
  void* o;
  int T, H, nc, dk, dv;
  int hq, hk, hv;              // heads of q, k, v
  int q_group, k_group, v_group;  // H / hq, H / hk, H / hv
  float scale;
};

// Rows [0, valid) of an [R][W] bf16 tile (mma.cuh's load_tile); the other rows are
// zero-filled, so padded tokens contribute nothing.
template <int R, int W, int kCopiers = kThreads>
__device__ __forceinline__ void load_tile(__nv_bfloat16* s, const __nv_bfloat16* g, int64_t ld, int valid) {
  cuda::load_tile<R, W, kCopiers>(s, g, ld, valid, g);
}

// Float offset of column `col` of row `row` in a [rows][W] f32 tile stored with the bf16
// tiles' swizzle (each row viewed as 2W bf16), so load_tile copies it and reads of one
// column over 8 rows hit distinct banks.
template <int W>
__device__ __forceinline__ int swz_f32(int row, int col) {
  return (swz<2 * W>(row, col >> 2) >> 1) + (col & 3);
}

// Rows [0, valid) of a swizzled [R][W] f32 tile (zero-filled past `valid`).
template <int R, int W, int kCopiers = kThreads>
__device__ __forceinline__ void load_f32_tile(float* s, const float* g, int64_t ld, int valid) {
  load_tile<R, 2 * W, kCopiers>(reinterpret_cast<__nv_bfloat16*>(s), reinterpret_cast<const __nv_bfloat16*>(g),
                                2 * ld, valid);
}

struct TokenGate {
  float g;  // log2 a
  float w;  // value scale
};

// A token's gate from its per-token values (ignored when the op has none). Tokens past T
// get a = 1 and value scale 0, so they change neither the decays nor the sums.
__device__ __forceinline__ TokenGate token_gate(const Params& p, float head_gate, bool valid, float tok_gate,
                                                float tok_scale) {
  if (!valid) return {0.f, 0.f};
  const float g = p.gate_tok ? tok_gate * (p.gate_head ? head_gate : 1.f) : (p.gate_head ? head_gate : 0.f);
  return {g * kLog2e, p.value_scale ? tok_scale : 1.f};
}

struct ChunkGates {
  float2 G;      // cumulative log2-gates of tokens 2 lane and 2 lane + 1
  float2 scale;  // their value scales
  float G_last;  // the chunk's total
};

// One warp's inclusive scan of the chunk's log2-gates; lane l brings tokens 2l, 2l + 1.
__device__ __forceinline__ ChunkGates scan_gates(TokenGate a, TokenGate b, int lane) {
  float incl = a.g + b.g;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float n = __shfl_up_sync(kFull, incl, off);
    if (lane >= off) incl += n;
  }
  ChunkGates c;
  c.G = make_float2(incl - b.g, incl);
  c.scale = make_float2(a.w, b.w);
  c.G_last = __shfl_sync(kFull, incl, 31);
  return c;
}

__device__ __forceinline__ uint32_t scale_bf16x2(uint32_t x, float lo, float hi) {
  const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
  return pack_bf16x2(f.x * lo, f.y * hi);
}

// Kernel 1: 8 warps, warp w owning rows 16 (w % 4).. of the tile and columns 32 (w / 4)..,
// so that each chunk's step of the sequential walk is short. Its pipeline: chunk
// c + stages - 1 is being copied while chunk c is used. With the vector gate a stage also
// holds the chunk's cumulative log2-gates for the tile's 64 dk rows (f32), so it keeps
// three stages to fit two CTAs per SM.
constexpr int kStateWarps = 8;
constexpr int kStateThreads = kStateWarps * 32;
template <bool kVector>
constexpr int kStages = kVector ? 3 : 4;
constexpr int kStageTile = kChunk * kTile;  // elements of one K or V tile
template <bool kVector>
constexpr int kStateSmem =
    kStages<kVector> * (2 * kStageTile * static_cast<int>(sizeof(__nv_bfloat16)) +
                        (kVector ? kStageTile : 2 * kChunk) * static_cast<int>(sizeof(float)));

struct StateSmem {
  __nv_bfloat16* k;  // [stages][kChunk][kTile]
  __nv_bfloat16* v;  // [stages][kChunk][kTile]
  float* gate;       // scalar gates: [stages][kChunk] per-token log-gate as given;
                     // vector gate: [stages][kChunk][kTile] cumulative log2-gates (swz_f32)
  float* scale;      // [stages][kChunk] per-token value scale (scalar gates only)
};

// Queues chunk c's tiles and per-token values into stage c % stages and commits one
// group (an empty one past the last chunk, so that groups and chunks stay in step).
// gcum: this tile's columns of p.gate_cum at token 0 (vector gate only).
template <bool kVector>
__device__ __forceinline__ void stage_chunk(const Params& p, const StateSmem& sm, const __nv_bfloat16* k,
                                            const __nv_bfloat16* v, const float* gcum, int64_t k_ld,
                                            int64_t v_ld, int b, int h, int c) {
  if (c < p.nc) {
    const int t0 = c * kChunk, st = c % kStages<kVector>;
    load_tile<kChunk, kTile, kStateThreads>(sm.k + st * kStageTile, k + t0 * k_ld, k_ld, p.T - t0);
    load_tile<kChunk, kTile, kStateThreads>(sm.v + st * kStageTile, v + t0 * v_ld, v_ld, p.T - t0);
    if constexpr (kVector) {
      const int64_t g_ld = static_cast<int64_t>(p.H) * p.dk;
      load_f32_tile<kChunk, kTile, kStateThreads>(sm.gate + st * kStageTile, gcum + t0 * g_ld, g_ld, p.T - t0);
    } else if (threadIdx.x < 2 * kChunk) {  // threads 0-63 copy the gates, 64-127 the value scales
      const int i = threadIdx.x & (kChunk - 1), t = t0 + i;
      const int64_t at = (static_cast<int64_t>(b) * p.T + min(t, p.T - 1)) * p.H + h;
      const float* src = threadIdx.x < kChunk ? p.gate_tok : p.value_scale;
      float* dst = (threadIdx.x < kChunk ? sm.gate : sm.scale) + st * kChunk + i;
      if (src) cp_async_4(dst, src + at, t < p.T);
    }
  }
  cp_async_commit();
}

template <bool kVector>
__global__ void __launch_bounds__(kStateThreads) chunk_state_kernel(const Params p) {
  constexpr int kSt = kStages<kVector>;
  extern __shared__ __align__(128) unsigned char smem[];
  StateSmem sm;
  sm.k = reinterpret_cast<__nv_bfloat16*>(smem);
  sm.v = sm.k + kSt * kStageTile;
  sm.gate = reinterpret_cast<float*>(sm.v + kSt * kStageTile);
  sm.scale = sm.gate + kSt * kChunk;
  const int v_tiles = p.dv / kTile;
  const int kt = static_cast<int>(blockIdx.x) / v_tiles, vt = static_cast<int>(blockIdx.x) % v_tiles;
  const int h = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t k_ld = static_cast<int64_t>(p.hk) * p.dk, v_ld = static_cast<int64_t>(p.hv) * p.dv;
  const __nv_bfloat16* k = p.k + static_cast<int64_t>(b) * p.T * k_ld + (h / p.k_group) * p.dk + kt * kTile;
  const __nv_bfloat16* v = p.v + static_cast<int64_t>(b) * p.T * v_ld + (h / p.v_group) * p.dv + vt * kTile;
  const float* gcum =
      kVector ? p.gate_cum + (static_cast<int64_t>(b) * p.T * p.H + h) * p.dk + kt * kTile : nullptr;
  const float head_gate = p.gate_head ? p.gate_head[h] : 0.f;

  // acc[nt][c] is S[row0 + 8 (c >> 1)][col0 + 8 nt + (c & 1)] (the m16n8 C fragment) of
  // this warp's 16 x 32 piece: rows 16 wr.., columns 32 wc.. of the tile.
  constexpr int kCols = kTile / 2;
  const int wr = warp & 3, wc = warp >> 2;
  const int row0 = kt * kTile + wr * 16 + (lane >> 2);
  const int col0 = vt * kTile + wc * kCols + ((lane & 3) << 1);
  const int d0 = wr * 16 + (lane >> 2);  // this lane's two rows of the tile: d0, d0 + 8
  float* state = p.state + (static_cast<int64_t>(b) * p.H + h) * p.dk * p.dv;
  float acc[kCols / 8][4];
#pragma unroll
  for (int nt = 0; nt < kCols / 8; ++nt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float2 s = *reinterpret_cast<const float2*>(state + (row0 + 8 * r) * p.dv + col0 + nt * 8);
      acc[nt][2 * r] = s.x;
      acc[nt][2 * r + 1] = s.y;
    }

#pragma unroll
  for (int c = 0; c < kSt - 1; ++c) stage_chunk<kVector>(p, sm, k, v, gcum, k_ld, v_ld, b, h, c);
  __nv_bfloat16* ws = p.chunk_states + (static_cast<int64_t>(b) * p.H + h) * p.nc * p.dk * p.dv;
  for (int c = 0; c < p.nc; ++c) {
    const int t0 = c * kChunk, st = c % kSt;
    __nv_bfloat16* start = ws + static_cast<int64_t>(c) * p.dk * p.dv;
#pragma unroll
    for (int nt = 0; nt < kCols / 8; ++nt)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        *reinterpret_cast<__nv_bfloat162*>(start + (row0 + 8 * r) * p.dv + col0 + nt * 8) =
            __floats2bfloat162_rn(acc[nt][2 * r], acc[nt][2 * r + 1]);

    cp_async_wait<kSt - 2>();  // chunk c's group is complete
    // Also: every warp has finished chunk c - 1, whose stage the next copy overwrites.
    __syncthreads();
    stage_chunk<kVector>(p, sm, k, v, gcum, k_ld, v_ld, b, h, c + kSt - 1);

    // The row decays 2^{G_last} (acc row r is tile row d0 + 8 r) and, per token j, the
    // factor 2^{G_last - G_j} w_j of K^T's column j: one per token for scalar gates, one
    // per (row, token) for the vector gate.
    float decay[2], wx = 0.f, wy = 0.f;
    const float* gv = sm.gate + st * kStageTile;
    if constexpr (kVector) {
      const int last = min(kChunk, p.T - t0) - 1;
      decay[0] = gv[swz_f32<kTile>(last, d0)];  // G_last, log2
      decay[1] = gv[swz_f32<kTile>(last, d0 + 8)];
    } else {
      const float* sg = sm.gate + st * kChunk;
      const float* sw = sm.scale + st * kChunk;
      const int j = 2 * lane;
      const ChunkGates g = scan_gates(token_gate(p, head_gate, t0 + j < p.T, sg[j], sw[j]),
                                      token_gate(p, head_gate, t0 + j + 1 < p.T, sg[j + 1], sw[j + 1]), lane);
      wx = fast_exp2(g.G_last - g.G.x) * g.scale.x;
      wy = fast_exp2(g.G_last - g.G.y) * g.scale.y;
      decay[0] = decay[1] = g.G_last;
    }
    const float row_decay[2] = {fast_exp2(decay[0]), fast_exp2(decay[1])};
#pragma unroll
    for (int nt = 0; nt < kCols / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] *= row_decay[e >> 1];

    const __nv_bfloat16* ks = sm.k + st * kStageTile;
    const __nv_bfloat16* vs = sm.v + st * kStageTile;
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk) {
      // A = K^T (m = dk row, k = token): the four 8x8 matrices are (rows 0-7 | 8-15) x
      // (tokens 0-7 | 8-15) of this warp's 16 rows, read transposed from token rows.
      uint32_t a[4];
      ldmatrix_x4_trans(a, ks + swz<kTile>(kk * 16 + (lane & 7) + ((lane >> 4) << 3), wr * 2 + ((lane >> 3) & 1)));
      // a[0], a[1] hold tokens 16kk + 2(lane & 3) + {0, 1}, a[2], a[3] those + 8, of rows
      // d0 (a[0], a[2]) and d0 + 8 (a[1], a[3]).
      if constexpr (kVector) {
        const int j = kk * 16 + 2 * (lane & 3);
        auto f = [&](int t, int r) { return fast_exp2(decay[r] - gv[swz_f32<kTile>(t, d0 + 8 * r)]); };
        a[0] = scale_bf16x2(a[0], f(j, 0), f(j + 1, 0));
        a[1] = scale_bf16x2(a[1], f(j, 1), f(j + 1, 1));
        a[2] = scale_bf16x2(a[2], f(j + 8, 0), f(j + 9, 0));
        a[3] = scale_bf16x2(a[3], f(j + 8, 1), f(j + 9, 1));
      } else {
        // Lane s holds the factors of tokens 2s and 2s + 1.
        const int src = kk * 8 + (lane & 3);
        const float w0 = __shfl_sync(kFull, wx, src), w1 = __shfl_sync(kFull, wy, src);
        const float w8 = __shfl_sync(kFull, wx, src + 4), w9 = __shfl_sync(kFull, wy, src + 4);
        a[0] = scale_bf16x2(a[0], w0, w1);
        a[1] = scale_bf16x2(a[1], w0, w1);
        a[2] = scale_bf16x2(a[2], w8, w9);
        a[3] = scale_bf16x2(a[3], w8, w9);
      }
#pragma unroll
      for (int np = 0; np < kCols / 16; ++np) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, vs + swz<kTile>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3),
                                              wc * (kCols / 8) + np * 2 + (lane >> 4)));
        mma_bf16_16816(acc[2 * np], a, vb[0], vb[1]);
        mma_bf16_16816(acc[2 * np + 1], a, vb[2], vb[3]);
      }
    }
  }
  cp_async_wait<0>();
#pragma unroll
  for (int nt = 0; nt < kCols / 8; ++nt)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      *reinterpret_cast<float2*>(state + (row0 + 8 * r) * p.dv + col0 + nt * 8) =
          make_float2(acc[nt][2 * r], acc[nt][2 * r + 1]);
}

// Queues the chunk's Q, K, V tiles (rows past `valid` zero-filled) and its start state
// S_c into the output kernels' shared tiles (no commit).
template <int DK, int DV>
__device__ __forceinline__ void load_chunk_operands(const Params& p, __nv_bfloat16* sQ, __nv_bfloat16* sK,
                                                    __nv_bfloat16* sV, __nv_bfloat16* sS, int64_t bt0, int b,
                                                    int h, int c, int valid) {
  const int64_t q_ld = static_cast<int64_t>(p.hq) * DK, k_ld = static_cast<int64_t>(p.hk) * DK;
  const int64_t v_ld = static_cast<int64_t>(p.hv) * DV;
  load_tile<kChunk, DK>(sQ, p.q + bt0 * q_ld + (h / p.q_group) * DK, q_ld, valid);
  load_tile<kChunk, DK>(sK, p.k + bt0 * k_ld + (h / p.k_group) * DK, k_ld, valid);
  load_tile<kChunk, DV>(sV, p.v + bt0 * v_ld + (h / p.v_group) * DV, v_ld, valid);
  load_tile<DK, DV>(sS, p.chunk_states + ((static_cast<int64_t>(b) * p.H + h) * p.nc + c) * DK * DV, DV, DK);
}

template <int N>
__device__ __forceinline__ void zero_fragments(float (&f)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) f[i][e] = 0.f;
}

// acc += (query fragment a, dk slice kk) S_c over all DV columns.
template <int DV>
__device__ __forceinline__ void accumulate_state_product(float (&acc)[DV / 8][4], const uint32_t (&a)[4],
                                                         const __nv_bfloat16* sS, int kk, int lane) {
#pragma unroll
  for (int dp = 0; dp < DV / 16; ++dp) {
    uint32_t sb[4];
    ldmatrix_x4_trans(sb, sS + swz<DV>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4)));
    mma_bf16_16816(acc[2 * dp], a, sb[0], sb[1]);
    mma_bf16_16816(acc[2 * dp + 1], a, sb[2], sb[3]);
  }
}

// acc += P V over this warp's causal key blocks 0..warp: the scores s (m16n8 C fragments of
// the warp's 16 rows against the chunk's 64 keys) become the A fragments.
template <int DV>
__device__ __forceinline__ void accumulate_pv(float (&acc)[DV / 8][4], const float (&s)[kChunk / 8][4],
                                              const __nv_bfloat16* sV, int warp, int lane) {
#pragma unroll
  for (int kk = 0; kk < kChunk / 16; ++kk) {
    if (kk > warp) continue;  // masked to zero
    uint32_t pa[4];
    pa[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
    pa[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
    pa[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pa[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < DV / 16; ++dp) {
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, sV + swz<DV>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4)));
      mma_bf16_16816(acc[2 * dp], pa, vb[0], vb[1]);
      mma_bf16_16816(acc[2 * dp + 1], pa, vb[2], vb[3]);
    }
  }
}

// Writes this lane's rows r0 and r0 + 8 of the chunk (those below `valid`): scale acc plus
// the skip D_h v when the op has one.
template <int DV, bool kF32Out>
__device__ __forceinline__ void store_rows(const Params& p, const float (&acc)[DV / 8][4], const __nv_bfloat16* sV,
                                           int64_t bt0, int h, int r0, int valid, int lane) {
  const float skip = p.skip ? p.skip[h] : 0.f;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = r0 + 8 * r;
    if (i >= valid) continue;
    const int64_t out_row = ((bt0 + i) * p.H + h) * DV;
#pragma unroll
    for (int dt = 0; dt < DV / 8; ++dt) {
      const int col = dt * 8 + ((lane & 3) << 1);
      float y0 = acc[dt][2 * r] * p.scale, y1 = acc[dt][2 * r + 1] * p.scale;
      if (p.skip) {
        const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(sV + swz<DV>(i, col >> 3) + (col & 7)));
        y0 += skip * x.x;
        y1 += skip * x.y;
      }
      if constexpr (kF32Out) {
        *reinterpret_cast<float2*>(static_cast<float*>(p.o) + out_row + col) = make_float2(y0, y1);
      } else {
        *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p.o) + out_row + col) =
            __floats2bfloat162_rn(y0, y1);
      }
    }
  }
}

template <int DK, int DV>
constexpr int kOutputSmem = (2 * kChunk * DK + kChunk * DV + DK * DV) * static_cast<int>(sizeof(__nv_bfloat16));

template <int DK, int DV, bool kF32Out>
__global__ void __launch_bounds__(kThreads) chunk_output_kernel(const Params p) {
  extern __shared__ __align__(128) unsigned char smem[];
  auto* sQ = reinterpret_cast<__nv_bfloat16*>(smem);
  auto* sK = sQ + kChunk * DK;
  auto* sV = sK + kChunk * DK;
  auto* sS = sV + kChunk * DV;  // S_c, [DK][DV]
  __shared__ float sG[kChunk], sW[kChunk];

  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int t0 = c * kChunk;
  const int valid = min(kChunk, p.T - t0);
  const int64_t bt0 = static_cast<int64_t>(b) * p.T + t0;
  load_chunk_operands<DK, DV>(p, sQ, sK, sV, sS, bt0, b, h, c, valid);
  cp_async_commit();
  if (warp == 0) {
    TokenGate tg[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int t = t0 + 2 * lane + e;
      const int64_t at = (bt0 + 2 * lane + e) * p.H + h;
      const bool ok = t < p.T;
      tg[e] = token_gate(p, p.gate_head ? p.gate_head[h] : 0.f, ok, ok && p.gate_tok ? p.gate_tok[at] : 0.f,
                         ok && p.value_scale ? p.value_scale[at] : 0.f);
    }
    const ChunkGates g = scan_gates(tg[0], tg[1], lane);
    sG[2 * lane] = g.G.x;
    sG[2 * lane + 1] = g.G.y;
    sW[2 * lane] = g.scale.x;
    sW[2 * lane + 1] = g.scale.y;
  }
  cp_async_wait<0>();
  __syncthreads();

  // acc[dt][e]: o row r0 + 8 (e >> 1), column 8 dt + 2 (lane & 3) + (e & 1); s[nt][e]:
  // score of the same rows against key 8 nt + 2 (lane & 3) + (e & 1).
  const int m0 = warp * 16;
  const int r0 = m0 + (lane >> 2);
  float acc[DV / 8][4], s[kChunk / 8][4];
  zero_fragments(acc);
  zero_fragments(s);

  // Q S_c and Q K^T share the Q fragments.
#pragma unroll
  for (int kk = 0; kk < DK / 16; ++kk) {
    uint32_t qa[4];
    ldmatrix_x4(qa, sQ + swz<DK>(m0 + (lane & 15), kk * 2 + (lane >> 4)));
    accumulate_state_product<DV>(acc, qa, sS, kk, lane);
#pragma unroll
    for (int np = 0; np < kChunk / 16; ++np) {
      if (np > warp) continue;  // keys after this warp's last row
      uint32_t kb[4];
      ldmatrix_x4(kb, sK + swz<DK>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
      mma_bf16_16816(s[2 * np], qa, kb[0], kb[1]);
      mma_bf16_16816(s[2 * np + 1], qa, kb[2], kb[3]);
    }
  }

  const float G_row[2] = {sG[r0], sG[r0 + 8]};
  const float carry[2] = {fast_exp2(G_row[0]), fast_exp2(G_row[1])};
#pragma unroll
  for (int dt = 0; dt < DV / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dt][e] *= carry[e >> 1];
#pragma unroll
  for (int nt = 0; nt < kChunk / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = r0 + ((e >> 1) << 3);
      const int j = nt * 8 + ((lane & 3) << 1) + (e & 1);
      s[nt][e] = j <= i ? s[nt][e] * fast_exp2(G_row[e >> 1] - sG[j]) * sW[j] : 0.f;
    }

  accumulate_pv<DV>(acc, s, sV, warp, lane);
  store_rows<DV, kF32Out>(p, acc, sV, bt0, h, r0, valid, lane);
}

// The vector gate's output kernel. Row i's decay from key j differs per dk index, so it
// moves into the operands: q_i 2^{G_i} against S_c; for the key blocks before the warp's
// own, q_i 2^{G_i - E} and k_j 2^{E - G_j} with E the cumulative gate of the token just
// before the warp's first row (both exponents <= 0, as G never increases, so nothing
// overflows); the warp's own 16 x 16 diagonal block elementwise in f32,
// sum_d q_i[d] k_j[d] 2^{G_i[d] - G_j[d]} (fla's intra-sub-chunk step does the same), handed
// to the P V fragments through shared memory.
template <int DK, int DV>
constexpr int kVectorOutputSmem = kOutputSmem<DK, DV> + kChunk * DK * static_cast<int>(sizeof(float));
constexpr int kScratchLd = 17;  // the diagonal block's row stride in floats (odd: no bank conflicts)

// 8 consecutive bf16 / f32 values at the start of a 16-byte chunk, widened.
__device__ __forceinline__ void load8(const __nv_bfloat16* s, float (&x)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(s);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[e]));
    x[2 * e] = f.x;
    x[2 * e + 1] = f.y;
  }
}
template <int W>
__device__ __forceinline__ void load8(const float* tile, int row, int col, float (&x)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(tile + swz_f32<W>(row, col));
  const float4 b = *reinterpret_cast<const float4*>(tile + swz_f32<W>(row, col + 4));
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}

template <int DK, int DV, bool kF32Out>
__global__ void __launch_bounds__(kThreads) vector_gate_output_kernel(const Params p) {
  extern __shared__ __align__(128) unsigned char smem[];
  auto* sQ = reinterpret_cast<__nv_bfloat16*>(smem);
  auto* sK = sQ + kChunk * DK;
  auto* sV = sK + kChunk * DK;
  auto* sS = sV + kChunk * DV;                        // S_c, [DK][DV]
  auto* sG = reinterpret_cast<float*>(sS + DK * DV);  // [kChunk][DK] cumulative log2-gates

  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int t0 = c * kChunk;
  const int valid = min(kChunk, p.T - t0);
  const int64_t g_ld = static_cast<int64_t>(p.H) * DK;
  const int64_t bt0 = static_cast<int64_t>(b) * p.T + t0;
  load_chunk_operands<DK, DV>(p, sQ, sK, sV, sS, bt0, b, h, c, valid);
  load_f32_tile<kChunk, DK>(sG, p.gate_cum + bt0 * g_ld + h * DK, g_ld, valid);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  const int m0 = warp * 16;
  const int r0 = m0 + (lane >> 2);
  float acc[DV / 8][4], s[kChunk / 8][4];
  zero_fragments(acc);
  zero_fragments(s);
  auto G = [&](int row, int col) { return *reinterpret_cast<const float2*>(sG + swz_f32<DK>(row, col)); };
  auto scaled = [](uint32_t x, float2 g) { return scale_bf16x2(x, fast_exp2(g.x), fast_exp2(g.y)); };
  auto below = [](float2 a, float2 b) { return make_float2(fminf(a.x - b.x, 0.f), fminf(a.y - b.y, 0.f)); };

#pragma unroll
  for (int kk = 0; kk < DK / 16; ++kk) {
    // qa[0]: row r0, dims d, d + 1; qa[1]: row r0 + 8; qa[2], qa[3]: the same at d + 8.
    uint32_t qa[4];
    ldmatrix_x4(qa, sQ + swz<DK>(m0 + (lane & 15), kk * 2 + (lane >> 4)));
    const int d = kk * 16 + 2 * (lane & 3);
    const float2 g[4] = {G(r0, d), G(r0 + 8, d), G(r0, d + 8), G(r0 + 8, d + 8)};
    const uint32_t qc[4] = {scaled(qa[0], g[0]), scaled(qa[1], g[1]), scaled(qa[2], g[2]), scaled(qa[3], g[3])};
    accumulate_state_product<DV>(acc, qc, sS, kk, lane);
    if (warp == 0) continue;  // no key block before the diagonal
    const float2 e[2] = {G(m0 - 1, d), G(m0 - 1, d + 8)};
    const uint32_t qt[4] = {scaled(qa[0], below(g[0], e[0])), scaled(qa[1], below(g[1], e[0])),
                            scaled(qa[2], below(g[2], e[1])), scaled(qa[3], below(g[3], e[1]))};
#pragma unroll
    for (int np = 0; np < kChunk / 16; ++np) {
      if (np >= warp) continue;
      // kb[0]: key j, dims d, d + 1; kb[1]: key j, d + 8; kb[2], kb[3]: key j + 8.
      uint32_t kb[4];
      ldmatrix_x4(kb, sK + swz<DK>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
      const int j = np * 16 + (lane >> 2);
      kb[0] = scaled(kb[0], below(e[0], G(j, d)));
      kb[1] = scaled(kb[1], below(e[1], G(j, d + 8)));
      kb[2] = scaled(kb[2], below(e[0], G(j + 8, d)));
      kb[3] = scaled(kb[3], below(e[1], G(j + 8, d + 8)));
      mma_bf16_16816(s[2 * np], qt, kb[0], kb[1]);
      mma_bf16_16816(s[2 * np + 1], qt, kb[2], kb[3]);
    }
  }

  // The diagonal block: lane holds row il of the warp's 16 and keys jl0..jl0 + 7.
  const int il = lane & 15, jl0 = (lane >> 4) * 8;
  float diag[8] = {};
#pragma unroll 1
  for (int ch = 0; ch < DK / 8; ++ch) {
    float qf[8], gi[8];
    load8(sQ + swz<DK>(m0 + il, ch), qf);
    load8<DK>(sG, m0 + il, ch * 8, gi);
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) {
      float kf[8], gj[8];
      load8(sK + swz<DK>(m0 + jl0 + jj, ch), kf);
      load8<DK>(sG, m0 + jl0 + jj, ch * 8, gj);
#pragma unroll
      for (int e = 0; e < 8; ++e) diag[jj] += qf[e] * kf[e] * fast_exp2(fminf(gi[e] - gj[e], 0.f));
    }
  }
  __syncthreads();  // every warp is done reading S_c: its tile becomes the scratch
  float* scratch = reinterpret_cast<float*>(sS) + warp * 16 * kScratchLd;
#pragma unroll
  for (int jj = 0; jj < 8; ++jj) scratch[il * kScratchLd + jl0 + jj] = jl0 + jj <= il ? diag[jj] : 0.f;
  __syncwarp();
#pragma unroll
  for (int np = 0; np < kChunk / 16; ++np) {
    if (np != warp) continue;
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[2 * np + half][e] =
            scratch[((lane >> 2) + 8 * (e >> 1)) * kScratchLd + half * 8 + 2 * (lane & 3) + (e & 1)];
  }

  accumulate_pv<DV>(acc, s, sV, warp, lane);
  store_rows<DV, kF32Out>(p, acc, sV, bt0, h, r0, valid, lane);
}

// Cumulative log2-gates of the vector gate inside each chunk: one thread per dk index of a
// (chunk, head, batch). Sums of values <= 0 in f32 never increase.
__global__ void cumulative_gate_kernel(const Params p) {
  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int t0 = c * kChunk, t1 = min(p.T, t0 + kChunk);
  const int64_t step = static_cast<int64_t>(p.H) * p.dk;
  int64_t at = (static_cast<int64_t>(b) * p.T + t0) * step + static_cast<int64_t>(h) * p.dk + threadIdx.x;
  float G = 0.f;
  for (int t = t0; t < t1; ++t, at += step) {
    G += p.gate_vec[at] * kLog2e;
    p.gate_cum[at] = G;
  }
}

template <int DK, int DV, bool kF32Out>
void launch_output(const Params& p, int batch) {
  const bool vector = p.gate_cum != nullptr;
  const auto kernel = vector ? vector_gate_output_kernel<DK, DV, kF32Out> : chunk_output_kernel<DK, DV, kF32Out>;
  const int smem_bytes = vector ? kVectorOutputSmem<DK, DV> : kOutputSmem<DK, DV>;
  static const bool configured = [] {
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(chunk_output_kernel<DK, DV, kF32Out>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, kOutputSmem<DK, DV>));
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(vector_gate_output_kernel<DK, DV, kF32Out>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, kVectorOutputSmem<DK, DV>));
    return true;
  }();
  (void)configured;
  const dim3 grid(static_cast<unsigned>(p.nc), static_cast<unsigned>(p.H), static_cast<unsigned>(batch));
  kernel<<<grid, kThreads, smem_bytes, stream()>>>(p);
  SUBQ_CUDA_CHECK_LAUNCH(vector ? "vector_gate_output_kernel" : "chunk_output_kernel");
}

template <int DK, int DV>
void launch_output(const Params& p, int batch, bool f32_out) {
  f32_out ? launch_output<DK, DV, true>(p, batch) : launch_output<DK, DV, false>(p, batch);
}

// The workspace goes back to the caching allocator once both kernels are queued: the
// next user of the block runs after them on the same stream.
struct Workspace {
  void* p;
  explicit Workspace(size_t bytes) : p(bytes ? device_alloc(bytes) : nullptr) {}
  ~Workspace() { device_free(p); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};

void run(Params p, int batch, bool f32_out) {
  p.nc = (p.T + kChunk - 1) / kChunk;
  p.q_group = p.H / p.hq;
  p.k_group = p.H / p.hk;
  p.v_group = p.H / p.hv;
  const dim3 heads_grid(static_cast<unsigned>(p.nc), static_cast<unsigned>(p.H), static_cast<unsigned>(batch));
  Workspace ws(static_cast<size_t>(batch) * p.H * p.nc * p.dk * p.dv * sizeof(__nv_bfloat16));
  p.chunk_states = static_cast<__nv_bfloat16*>(ws.p);
  const bool vector = p.gate_vec != nullptr;
  Workspace gate_ws(vector ? static_cast<size_t>(batch) * p.T * p.H * p.dk * sizeof(float) : 0);
  if (vector) {
    p.gate_cum = static_cast<float*>(gate_ws.p);
    cumulative_gate_kernel<<<heads_grid, static_cast<unsigned>(p.dk), 0, stream()>>>(p);
    SUBQ_CUDA_CHECK_LAUNCH("cumulative_gate_kernel");
  }
  static const bool configured = [] {
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(chunk_state_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         kStateSmem<false>));
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(chunk_state_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         kStateSmem<true>));
    return true;
  }();
  (void)configured;
  const dim3 grid1(static_cast<unsigned>((p.dk / kTile) * (p.dv / kTile)), static_cast<unsigned>(p.H),
                   static_cast<unsigned>(batch));
  if (vector) {
    chunk_state_kernel<true><<<grid1, kStateThreads, kStateSmem<true>, stream()>>>(p);
  } else {
    chunk_state_kernel<false><<<grid1, kStateThreads, kStateSmem<false>, stream()>>>(p);
  }
  SUBQ_CUDA_CHECK_LAUNCH("chunk_state_kernel");
  if (p.dk == 64) {
    p.dv == 64 ? launch_output<64, 64>(p, batch, f32_out) : launch_output<64, 128>(p, batch, f32_out);
  } else {
    p.dv == 64 ? launch_output<128, 64>(p, batch, f32_out) : launch_output<128, 128>(p, batch, f32_out);
  }
}

std::string str(int64_t x) { return std::to_string(x); }

void check_gpu(const Tensor& t, DType dtype, const std::string& what) {
  if (!t.defined()) throw Error(what + ": expected a tensor, got none");
  check_device(t, Device::cuda, what.c_str());
  check_dtype(t, dtype, what.c_str());
  check_contiguous(t, what.c_str());
}

void check_rank(const Tensor& t, int64_t rank, const std::string& what, const char* dims) {
  if (t.ndim() != rank) throw Error(what + ": expected " + dims + ", found " + t.str());
}

void check_head_dim(int64_t d, const std::string& what, const Tensor& t) {
  if (d != 64 && d != 128) throw Error(what + ": head dim must be 64 or 128 on the GPU, found " + t.str());
}

void check_heads(int64_t heads, int64_t H, const std::string& what, const Tensor& t) {
  if (heads < 1 || H % heads != 0)
    throw Error(what + ": heads (" + str(heads) + ") must divide the output heads (" + str(H) + "), found " + t.str());
}

// Output dtype bf16 or f32; returns whether it is f32.
bool check_output(const Tensor& o, const Shape& shape, const std::string& what) {
  if (!o.defined()) throw Error(what + ": expected a tensor, got none");
  check_device(o, Device::cuda, what.c_str());
  if (o.dtype() != DType::bf16 && o.dtype() != DType::f32)
    throw Error(what + ": expected dtype bf16 or f32, found " + std::string(dtype_name(o.dtype())));
  check_contiguous(o, what.c_str());
  check_shape(o, shape, what.c_str());
  return o.dtype() == DType::f32;
}

void check_no_alias(const Tensor& out, std::initializer_list<const Tensor*> inputs, const std::string& what) {
  for (const Tensor* t : inputs)
    if (t->defined() && t->device_raw_data() == out.device_raw_data())
      throw Error(what + ": must not alias an input");
}

void check_limits(int64_t B, int64_t T, int64_t H, const std::string& what) {
  if (B > 65535 || H > 65535 || T > (int64_t{1} << 30))
    throw Error(what + ": sizes exceed the kernels' grid limits (B, H <= 65535, T <= 2^30): B=" + str(B) +
                " T=" + str(T) + " H=" + str(H));
}

}  // namespace

void gated_linear_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_gate,
                            const Tensor& state, const Tensor& o, const ops::LinearAttentionOptions& options) {
  const std::string f = "cuda::gated_linear_attention";
  if (options.feature_map != ops::FeatureMap::identity)
    throw Error(f + ": options.feature_map: only identity is supported on the GPU");
  if (options.normalize) throw Error(f + ": options.normalize: the normaliser is not supported on the GPU");
  if (!std::isfinite(options.scale)) throw Error(f + ": options.scale must be finite, found " + std::to_string(options.scale));
  check_gpu(q, DType::bf16, f + " q");
  check_gpu(k, DType::bf16, f + " k");
  check_gpu(v, DType::bf16, f + " v");
  check_rank(q, 4, f + " q", "[B, T, Hq, dk]");
  check_rank(k, 4, f + " k", "[B, T, Hk, dk]");
  check_rank(v, 4, f + " v", "[B, T, Hv, dv]");
  const int64_t B = q.dim(0), T = q.dim(1), Hq = q.dim(2), dk = q.dim(3);
  const int64_t Hk = k.dim(2), Hv = v.dim(2), dv = v.dim(3);
  const int64_t H = std::max({Hq, Hk, Hv});
  check_shape(k, Shape{B, T, Hk, dk}, (f + " k").c_str());
  check_shape(v, Shape{B, T, Hv, dv}, (f + " v").c_str());
  check_head_dim(dk, f + " q", q);
  check_head_dim(dv, f + " v", v);
  check_heads(Hq, H, f + " q", q);
  check_heads(Hk, H, f + " k", k);
  check_heads(Hv, H, f + " v", v);
  if (T < 1) throw Error(f + " q: expected T >= 1, found " + q.str());
  check_limits(B, T, H, f);
  switch (options.gate) {
    case ops::LinearGate::none:
      if (log_gate.defined()) throw Error(f + " log_gate: expected none for gate=none, found " + log_gate.str());
      break;
    case ops::LinearGate::per_head:
      check_gpu(log_gate, DType::f32, f + " log_gate");
      check_shape(log_gate, Shape{H}, (f + " log_gate").c_str());
      break;
    case ops::LinearGate::per_token:
      check_gpu(log_gate, DType::f32, f + " log_gate");
      check_shape(log_gate, Shape{B, T, H}, (f + " log_gate").c_str());
      break;
    case ops::LinearGate::per_token_vector:
      check_gpu(log_gate, DType::f32, f + " log_gate");
      check_shape(log_gate, Shape{B, T, H, dk}, (f + " log_gate").c_str());
      break;
  }
  check_gpu(state, DType::f32, f + " state");
  check_shape(state, Shape{B, H, dk, dv}, (f + " state").c_str());
  const bool f32_out = check_output(o, Shape{B, T, H, dv}, f + " o");
  check_no_alias(o, {&q, &k, &v, &log_gate, &state}, f + " o");
  if (B == 0) return;

  Params p{};
  p.q = reinterpret_cast<const __nv_bfloat16*>(q.device_data<bf16>());
  p.k = reinterpret_cast<const __nv_bfloat16*>(k.device_data<bf16>());
  p.v = reinterpret_cast<const __nv_bfloat16*>(v.device_data<bf16>());
  if (options.gate == ops::LinearGate::per_head) p.gate_head = log_gate.device_data<float>();
  if (options.gate == ops::LinearGate::per_token) p.gate_tok = log_gate.device_data<float>();
  if (options.gate == ops::LinearGate::per_token_vector) p.gate_vec = log_gate.device_data<float>();
  p.state = state.mutable_device_data<float>();
  p.o = o.mutable_device_raw_data();
  p.T = static_cast<int>(T);
  p.H = static_cast<int>(H);
  p.dk = static_cast<int>(dk);
  p.dv = static_cast<int>(dv);
  p.hq = static_cast<int>(Hq);
  p.hk = static_cast<int>(Hk);
  p.hv = static_cast<int>(Hv);
  p.scale = options.scale;
  run(p, static_cast<int>(B), f32_out);
}

void ssd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm, const Tensor& D,
         const Tensor& state, const Tensor& y) {
  const std::string f = "cuda::ssd";
  check_gpu(x, DType::bf16, f + " x");
  check_rank(x, 4, f + " x", "[B, T, H, P]");
  const int64_t B = x.dim(0), T = x.dim(1), H = x.dim(2), P = x.dim(3);
  check_head_dim(P, f + " x", x);
  if (T < 1) throw Error(f + " x: expected T >= 1, found " + x.str());
  check_limits(B, T, H, f);
  check_gpu(dt, DType::f32, f + " dt");
  check_shape(dt, Shape{B, T, H}, (f + " dt").c_str());
  check_gpu(A, DType::f32, f + " A");
  check_shape(A, Shape{H}, (f + " A").c_str());
  check_gpu(Bm, DType::bf16, f + " B");
  check_rank(Bm, 4, f + " B", "[B, T, G, N]");
  const int64_t G = Bm.dim(2), N = Bm.dim(3);
  check_shape(Bm, Shape{B, T, G, N}, (f + " B").c_str());
  check_heads(G, H, f + " B", Bm);
  check_head_dim(N, f + " B", Bm);
  check_gpu(Cm, DType::bf16, f + " C");
  check_shape(Cm, Bm.shape(), (f + " C").c_str());
  if (D.defined()) {
    check_gpu(D, DType::f32, f + " D");
    check_shape(D, Shape{H}, (f + " D").c_str());
  }
  check_gpu(state, DType::f32, f + " state");
  check_shape(state, Shape{B, H, N, P}, (f + " state").c_str());
  const bool f32_out = check_output(y, Shape{B, T, H, P}, f + " y");
  check_no_alias(y, {&x, &dt, &A, &Bm, &Cm, &D, &state}, f + " y");
  if (B == 0) return;

  Params p{};
  p.q = reinterpret_cast<const __nv_bfloat16*>(Cm.device_data<bf16>());
  p.k = reinterpret_cast<const __nv_bfloat16*>(Bm.device_data<bf16>());
  p.v = reinterpret_cast<const __nv_bfloat16*>(x.device_data<bf16>());
  p.gate_tok = dt.device_data<float>();
  p.gate_head = A.device_data<float>();
  p.value_scale = dt.device_data<float>();
  p.skip = D.defined() ? D.device_data<float>() : nullptr;
  p.state = state.mutable_device_data<float>();
  p.o = y.mutable_device_raw_data();
  p.T = static_cast<int>(T);
  p.H = static_cast<int>(H);
  p.dk = static_cast<int>(N);
  p.dv = static_cast<int>(P);
  p.hq = p.hk = static_cast<int>(G);
  p.hv = static_cast<int>(H);
  p.scale = 1.f;
  run(p, static_cast<int>(B), f32_out);
}

}  // namespace subq::cuda
