// Chunked (gated) delta rule on tensor cores, two kernels per call.
//
// Per chunk of C = 64 tokens starting from state S0, with chunk-local inclusive
// cumulative log gates G_i, raw (bf16) keys/queries K, Q and their f32 row factors
// rk_i (1/|k_i| or 1) and qc_i (scale/|q_i| or scale), the CPU derivation
// (delta_rule.cpp) reads
//   M_ij  = beta_i rk_i rk_j exp(G_i - G_j) <K_i, K_j>   (j < i),  Ainv = (I + M)^-1
//   P_ij  = qc_i rk_j exp(G_i - G_j) <Q_i, K_j>           (j <= i)
//   R_i   = beta_i (V_i - exp(G_i) rk_i (K S0)_i)
//   V'    = Ainv R                                        (the UT transform applied to R)
//   O_i   = qc_i exp(G_i) (Q S0)_i + (P V')_i
//   S_new = exp(G_last) S0 + K^T diag(rk_j exp(G_last - G_j)) V'.
// delta_prepare_kernel (one CTA per batch, head, chunk; fully parallel) forms M and P
// from the tensor-core products K K^T and Q K^T, inverts I + M in f32 (16x16 diagonal
// blocks by forward substitution, then block rows), and writes Ainv, P (bf16) and the
// per-token factors (G, rk, qc, beta). delta_scan_kernel (one CTA per batch, head and 32
// or 64 state columns) walks the chunks in order with S in f32 registers and does the five
// products above on tensor cores; the per-chunk state never goes to memory (fla stores
// it for a separate output pass).
//
// Precision: every mma operand is bf16 with f32 accumulation. K and Q enter raw, so
// K K^T, Q K^T, K S and the update's K^T are exact in their K/Q factor; the
// normalisation and decays are applied in f32 outside the products. Rounded to bf16 are
// S (in K S and Q S), R, Ainv, P and V' (relative 2^-9 each), the same places fla rounds
// (it also rounds W, U and the stored per-chunk states). The delta rule does not amplify
// such errors: an error e in the predicted S^T k_t is written into S along k_t once and
// then overwritten by later updates along k_t or decayed, so the state's relative error
// stays near the rounding level instead of growing with T.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/core/cuda/mma.cuh"
#include "src/ops/delta/delta_rule_cuda.h"

namespace subq::cuda {
namespace {

using bf16_t = __nv_bfloat16;

constexpr int kChunk = 64;
// State columns per scan CTA: 64 halves the L2 reads of K, Q, Ainv and P (shared by the
// column tiles of a head) where the grid still fills the GPU, else 32 (scan_tile()).
constexpr int kMinTile = 32;
// Row paddings (in bf16 elements, 16 bytes) that make every ldmatrix phase touch 8
// distinct 16-byte bank groups: rows of 64 + 8, 128 + 8, 32 + 8 elements are 9, 17, 5
// groups long, all odd.
constexpr int kPad = 8;
constexpr int kPrepThreads = 128;
constexpr int kScanThreads = 256;

struct Params {
  const bf16_t* q;
  const bf16_t* k;
  const bf16_t* v;
  const float* beta;
  const float* log_gate;  // null: a = 1
  float* state;
  void* o;
  bf16_t* ainv;  // [B * H * nc][64][64]
  bf16_t* p;     // [B * H * nc][64][64]
  float4* coef;  // [B * H * nc][64]: (G, rk, qc, beta); padding tokens (G_last, 0, 0, 0)
  int T, H, Hq, Hk, Hv, dv, nc;
  bool l2;
  float eps, scale;
};

// ---- mma fragments from padded row-major shared tiles (ld elements per row) ----
// A (16x16) of a tile stored as A: rows r0.., columns c0...
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const bf16_t* s, int ld, int r0, int c0, int lane) {
  ldmatrix_x4(a, s + (r0 + (lane & 15)) * ld + c0 + ((lane >> 4) << 3));
}
// A (16x16) = X^T for X stored [k][m]: A rows m0.. are X columns, A columns k0.. X rows.
__device__ __forceinline__ void frag_a_t(uint32_t (&a)[4], const bf16_t* s, int ld, int k0, int m0, int lane) {
  ldmatrix_x4_trans(a, s + (k0 + (lane & 7) + ((lane >> 4) << 3)) * ld + m0 + (((lane >> 3) & 1) << 3));
}
// B of two n8 tiles (b[0..1]: columns n0..n0+7, b[2..3]: n0+8..) over k0..k0+15, B stored [k][n].
__device__ __forceinline__ void frag_b(uint32_t (&b)[4], const bf16_t* s, int ld, int k0, int n0, int lane) {
  ldmatrix_x4_trans(b, s + (k0 + (lane & 7) + (((lane >> 3) & 1) << 3)) * ld + n0 + ((lane >> 4) << 3));
}
// The same for B stored transposed, [n][k] (B = Y^T for the rows Y of a tile).
__device__ __forceinline__ void frag_b_t(uint32_t (&b)[4], const bf16_t* s, int ld, int n0, int k0, int lane) {
  ldmatrix_x4(b, s + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + (((lane >> 3) & 1) << 3));
}

// acc += row block mx (16 tokens) of a lower-triangular [64][64] A times the 16 * kTN
// columns from nx of B [64][...]: only A's token blocks 0..mx are non-zero.
template <int kTN>
__device__ __forceinline__ void lower_row_product(float (&acc)[kTN][4], const bf16_t* A, int lda, const bf16_t* B,
                                                  int ldb, int mx, int nx, int lane) {
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    if (ks > mx) continue;
    uint32_t a[4];
    frag_a(a, A, lda, 16 * mx, 16 * ks, lane);
#pragma unroll
    for (int jp = 0; jp < kTN / 2; ++jp) {
      uint32_t b[4];
      frag_b(b, B, ldb, 16 * ks, nx + 16 * jp, lane);
      mma_bf16_16816(acc[2 * jp], a, b[0], b[1]);
      mma_bf16_16816(acc[2 * jp + 1], a, b[2], b[3]);
    }
  }
}

__device__ __forceinline__ void store_bf16x2(bf16_t* s, float lo, float hi) {
  *reinterpret_cast<uint32_t*>(s) = pack_bf16x2(lo, hi);
}

// ---- delta_prepare_kernel: Ainv, P and the token factors of one (chunk, head, batch) ----
template <int DK>
struct PrepLayout {
  static constexpr int kLd = DK + kPad;
  static constexpr int kLf = kChunk + 1;  // f32 rows: column walks hit distinct banks
  static constexpr int kKQ = 2 * kChunk * kLd * 2;              // sK, sQ (bf16)
  static constexpr int kMT = 2 * kChunk * kLf * 4;              // sM, sT (f32), after the products
  static constexpr int kRegion = kKQ > kMT ? kKQ : kMT;
  static constexpr int kAi = kChunk * kLf * 4;
  static constexpr int kBytes = kRegion + kAi + 4 * kChunk * 4;  // + G, beta, rk, qc
};

template <int DK>
__global__ void __launch_bounds__(kPrepThreads) delta_prepare_kernel(const Params p) {
  using Lay = PrepLayout<DK>;
  constexpr int LD = Lay::kLd, LF = Lay::kLf;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16_t* sK = reinterpret_cast<bf16_t*>(smem);
  bf16_t* sQ = sK + kChunk * LD;
  float* sM = reinterpret_cast<float*>(smem);  // aliases sK/sQ once the products are done
  float* sT = sM + kChunk * LF;
  float* sAi = reinterpret_cast<float*>(smem + Lay::kRegion);
  float* sG = sAi + kChunk * LF;
  float* sBeta = sG + kChunk;
  float* sRk = sBeta + kChunk;
  float* sQc = sRk + kChunk;

  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int t0 = c * kChunk;
  const int L = min(kChunk, p.T - t0);
  const int hq = h / (p.H / p.Hq), hk = h / (p.H / p.Hk);
  const int64_t q_ld = static_cast<int64_t>(p.Hq) * DK, k_ld = static_cast<int64_t>(p.Hk) * DK;
  const bf16_t* qg = p.q + (static_cast<int64_t>(b) * p.T + t0) * q_ld + hq * DK;
  const bf16_t* kg = p.k + (static_cast<int64_t>(b) * p.T + t0) * k_ld + hk * DK;

  constexpr int kRowChunks = DK / 8;
#pragma unroll
  for (int i = 0; i < kChunk * kRowChunks / kPrepThreads; ++i) {
    const int idx = i * kPrepThreads + tid;
    const int r = idx / kRowChunks, ch = idx % kRowChunks;
    const bool ok = r < L;
    cp_async_16(sK + r * LD + ch * 8, ok ? kg + r * k_ld + ch * 8 : kg, ok);
    cp_async_16(sQ + r * LD + ch * 8, ok ? qg + r * q_ld + ch * 8 : qg, ok);
  }
  cp_async_commit();

  // Inclusive cumulative log gates, two tokens per lane; tokens past L add 0, so they
  // carry G_last. Their beta is 0, which makes their rows of M, Ainv - I and V' zero.
  if (warp == 0) {
    const int i0 = 2 * lane, i1 = i0 + 1;
    const int64_t base = (static_cast<int64_t>(b) * p.T + t0) * p.H + h;
    const float g0 = p.log_gate && i0 < L ? p.log_gate[base + static_cast<int64_t>(i0) * p.H] : 0.f;
    const float g1 = p.log_gate && i1 < L ? p.log_gate[base + static_cast<int64_t>(i1) * p.H] : 0.f;
    float incl = g0 + g1;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const float n = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += n;
    }
    sG[i0] = incl - g1;
    sG[i1] = incl;
    sBeta[i0] = i0 < L ? p.beta[base + static_cast<int64_t>(i0) * p.H] : 0.f;
    sBeta[i1] = i1 < L ? p.beta[base + static_cast<int64_t>(i1) * p.H] : 0.f;
  }
  cp_async_wait<0>();
  __syncthreads();

  // Row factors in f32 from the bf16 rows (the reference normalises the same values):
  // threads 0..63 take the key rows, 64..127 the query rows.
  {
    const int r = tid & (kChunk - 1);
    const bf16_t* row = (tid < kChunk ? sK : sQ) + r * LD;
    float ss = 0.f;
#pragma unroll
    for (int d = 0; d < DK; d += 8) {
      const uint4 u = *reinterpret_cast<const uint4*>(row + d);
      const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (const uint32_t& w : words) {
        const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
        ss = fmaf(f.x, f.x, fmaf(f.y, f.y, ss));
      }
    }
    const float inv = p.l2 ? 1.f / sqrtf(ss + p.eps) : 1.f;
    if (tid < kChunk) sRk[r] = r < L ? inv : 0.f;
    else sQc[r] = r < L ? p.scale * inv : 0.f;
  }
  __syncthreads();

  // K K^T and Q K^T for this warp's 16 rows; key blocks right of the diagonal are skipped.
  float kk[8][4], qk[8][4];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) kk[nt][e] = qk[nt][e] = 0.f;
#pragma unroll
  for (int ks = 0; ks < DK / 16; ++ks) {
    uint32_t ak[4], aq[4];
    frag_a(ak, sK, LD, 16 * warp, 16 * ks, lane);
    frag_a(aq, sQ, LD, 16 * warp, 16 * ks, lane);
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      if (np > warp) continue;
      uint32_t bk[4];
      frag_b_t(bk, sK, LD, 16 * np, 16 * ks, lane);
      mma_bf16_16816(kk[2 * np], ak, bk[0], bk[1]);
      mma_bf16_16816(kk[2 * np + 1], ak, bk[2], bk[3]);
      mma_bf16_16816(qk[2 * np], aq, bk[0], bk[1]);
      mma_bf16_16816(qk[2 * np + 1], aq, bk[2], bk[3]);
    }
  }

  // Scale and mask in f32: kk becomes M (kept in registers until sK is free), P goes out.
  const int64_t blk = (static_cast<int64_t>(b) * p.H + h) * p.nc + c;
  bf16_t* pg = p.p + blk * kChunk * kChunk;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = 16 * warp + g + 8 * half;
    const float gi = sG[i], bi = sBeta[i] * sRk[i], qi = sQc[i];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      float pv[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = 8 * nt + 2 * t4 + e;
        // exp only where j <= i: G_i - G_j >= 0 there, elsewhere it could overflow.
        const float dec = j <= i ? expf(gi - sG[j]) * sRk[j] : 0.f;
        kk[nt][2 * half + e] = j < i ? bi * dec * kk[nt][2 * half + e] : 0.f;
        pv[e] = qi * dec * qk[nt][2 * half + e];
      }
      store_bf16x2(pg + i * kChunk + 8 * nt + 2 * t4, pv[0], pv[1]);
    }
  }
  __syncthreads();  // every warp is done with sK, sQ
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = 16 * warp + g + 8 * half;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) sM[i * LF + 8 * nt + 2 * t4 + e] = kk[nt][2 * half + e];
  }
  __syncthreads();

  // (I + M)^-1, unit lower triangular. Diagonal 16x16 blocks: one column per thread.
  if (tid < 64) {
    const int o = 16 * (tid >> 4), cc = tid & 15;
    float x[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      float acc = r == cc ? 1.f : 0.f;
#pragma unroll
      for (int s = 0; s < r; ++s) acc = fmaf(-sM[(o + r) * LF + o + s], x[s], acc);
      x[r] = r < cc ? 0.f : acc;
    }
#pragma unroll
    for (int r = 0; r < 16; ++r) sAi[(o + r) * LF + o + cc] = x[r];
  }
  __syncthreads();
  // Block row ib: Ainv_{ib,jb} = -Ainv_{ib,ib} sum_{kb=jb}^{ib-1} M_{ib,kb} Ainv_{kb,jb}.
  for (int ib = 1; ib < 4; ++ib) {
    for (int e = tid; e < ib * 256; e += kPrepThreads) {
      const int jb = e >> 8, r = (e >> 4) & 15, cc = e & 15;
      float acc = 0.f;
      for (int s = 16 * jb; s < 16 * ib; ++s) acc = fmaf(sM[(16 * ib + r) * LF + s], sAi[s * LF + 16 * jb + cc], acc);
      sT[(16 * ib + r) * LF + 16 * jb + cc] = acc;
    }
    __syncthreads();
    for (int e = tid; e < ib * 256; e += kPrepThreads) {
      const int jb = e >> 8, r = (e >> 4) & 15, cc = e & 15;
      float acc = 0.f;
      for (int s = 0; s <= r; ++s)
        acc = fmaf(-sAi[(16 * ib + r) * LF + 16 * ib + s], sT[(16 * ib + s) * LF + 16 * jb + cc], acc);
      sAi[(16 * ib + r) * LF + 16 * jb + cc] = acc;
    }
    __syncthreads();
  }

  bf16_t* ag = p.ainv + blk * kChunk * kChunk;
  for (int e = tid; e < kChunk * kChunk / 2; e += kPrepThreads) {
    const int i = e >> 5, j = 2 * (e & 31);
    store_bf16x2(ag + i * kChunk + j, j <= i ? sAi[i * LF + j] : 0.f, j + 1 <= i ? sAi[i * LF + j + 1] : 0.f);
  }
  if (tid < kChunk) p.coef[blk * kChunk + tid] = make_float4(sG[tid], sRk[tid], sQc[tid], sBeta[tid]);
}

// ---- delta_scan_kernel: the chunks of one (BV state columns, head, batch) in order ----
template <int DK, int BV>
struct ScanLayout {
  static constexpr int kLdK = DK + kPad, kLdT = BV + kPad, kLdC = kChunk + kPad;
  static constexpr int kK = kChunk * kLdK * 2;  // sK, sQ
  static constexpr int kV = kChunk * kLdT * 2;
  static constexpr int kA = kChunk * kLdC * 2;  // sA, sP
  static constexpr int kC = kChunk * 16;
  static constexpr int kStage = 2 * kK + kV + 2 * kA + kC;
  static constexpr int kS = DK * kLdT * 2;
  static constexpr int kBytes = 2 * kStage + kS + 3 * kV;  // + sR, sVn, sVs
};

// One pipeline stage: a chunk's K, Q, V columns, Ainv, P and token factors.
struct Stage {
  bf16_t *k, *q, *v, *a, *p;
  float4* c;
};
template <int DK, int BV>
__device__ __forceinline__ Stage stage_at(unsigned char* smem, int st) {
  using Lay = ScanLayout<DK, BV>;
  unsigned char* s = smem + st * Lay::kStage;
  Stage out;
  out.k = reinterpret_cast<bf16_t*>(s);
  out.q = reinterpret_cast<bf16_t*>(s + Lay::kK);
  out.v = reinterpret_cast<bf16_t*>(s + 2 * Lay::kK);
  out.a = reinterpret_cast<bf16_t*>(s + 2 * Lay::kK + Lay::kV);
  out.p = reinterpret_cast<bf16_t*>(s + 2 * Lay::kK + Lay::kV + Lay::kA);
  out.c = reinterpret_cast<float4*>(s + 2 * Lay::kK + Lay::kV + 2 * Lay::kA);
  return out;
}

template <int DK, int BV, bool kF32Out>
__global__ void __launch_bounds__(kScanThreads) delta_scan_kernel(const Params p) {
  using Lay = ScanLayout<DK, BV>;
  constexpr int LDK = Lay::kLdK, LDT = Lay::kLdT, LDC = Lay::kLdC;
  constexpr int kMS = DK / 16;          // m16 tiles of the state's rows
  constexpr int kSNT = DK * BV / 1024;  // n8 tiles of the state per warp (8 warps)
  constexpr int kTN = BV / 16;          // n8 tiles per warp of the token-side products
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* common = smem + 2 * Lay::kStage;
  bf16_t* sS = reinterpret_cast<bf16_t*>(common);
  bf16_t* sR = reinterpret_cast<bf16_t*>(common + Lay::kS);
  bf16_t* sVn = reinterpret_cast<bf16_t*>(common + Lay::kS + Lay::kV);
  bf16_t* sVs = reinterpret_cast<bf16_t*>(common + Lay::kS + 2 * Lay::kV);

  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int hq = h / (p.H / p.Hq), hk = h / (p.H / p.Hk), hv = h / (p.H / p.Hv);
  const int64_t q_ld = static_cast<int64_t>(p.Hq) * DK, k_ld = static_cast<int64_t>(p.Hk) * DK;
  const int64_t v_ld = static_cast<int64_t>(p.Hv) * p.dv;
  const int64_t bh = static_cast<int64_t>(b) * p.H + h;

  auto load_chunk = [&](int c, int st) {
    const int t0 = c * kChunk, L = min(kChunk, p.T - t0);
    const Stage sb = stage_at<DK, BV>(smem, st);
    bf16_t *sK = sb.k, *sQ = sb.q, *sV = sb.v, *sA = sb.a, *sP = sb.p;
    float4* sC = sb.c;
    const int64_t row0 = static_cast<int64_t>(b) * p.T + t0;
    const bf16_t* kg = p.k + row0 * k_ld + hk * DK;
    const bf16_t* qg = p.q + row0 * q_ld + hq * DK;
    const bf16_t* vg = p.v + row0 * v_ld + static_cast<int64_t>(hv) * p.dv + tile * BV;
    constexpr int kRowChunks = DK / 8;
#pragma unroll
    for (int i = 0; i < kChunk * kRowChunks / kScanThreads; ++i) {
      const int idx = i * kScanThreads + tid;
      const int r = idx / kRowChunks, ch = idx % kRowChunks;
      const bool ok = r < L;
      cp_async_16(sK + r * LDK + ch * 8, ok ? kg + r * k_ld + ch * 8 : kg, ok);
      cp_async_16(sQ + r * LDK + ch * 8, ok ? qg + r * q_ld + ch * 8 : qg, ok);
    }
#pragma unroll
    for (int i = 0; i < kChunk * (BV / 8) / kScanThreads; ++i) {
      const int idx = i * kScanThreads + tid;
      const int r = idx / (BV / 8), ch = idx % (BV / 8);
      const bool ok = r < L;
      cp_async_16(sV + r * LDT + ch * 8, ok ? vg + r * v_ld + ch * 8 : vg, ok);
    }
    const int64_t blk = bh * p.nc + c;
    const bf16_t* ag = p.ainv + blk * kChunk * kChunk;
    const bf16_t* pg = p.p + blk * kChunk * kChunk;
#pragma unroll
    for (int i = 0; i < kChunk * 8 / kScanThreads; ++i) {
      const int idx = i * kScanThreads + tid;
      const int r = idx >> 3, ch = idx & 7;
      cp_async_16(sA + r * LDC + ch * 8, ag + r * kChunk + ch * 8, true);
      cp_async_16(sP + r * LDC + ch * 8, pg + r * kChunk + ch * 8, true);
    }
    if (tid < kChunk) cp_async_16(sC + tid, p.coef + blk * kChunk + tid, true);
    cp_async_commit();
  };

  // This thread's state elements: m16 tile ms, n8 tiles nb .. nb + kSNT - 1.
  const int ms = warp % kMS, nb = (warp / kMS) * kSNT;
  float* sg = p.state + bh * DK * p.dv + tile * BV;
  float s[kSNT][4];
#pragma unroll
  for (int j = 0; j < kSNT; ++j)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row = 16 * ms + g + 8 * hf, col = 8 * (nb + j) + 2 * t4;
      const float2 x = *reinterpret_cast<const float2*>(sg + static_cast<int64_t>(row) * p.dv + col);
      s[j][2 * hf] = x.x;
      s[j][2 * hf + 1] = x.y;
    }

  // Token-side work (X, Y, R, V', O): warp rows 16 mx.., columns nx..nx+BV/2-1 of the tile.
  const int mx = warp & 3, nx = (warp >> 2) * (BV / 2);
  const int r0 = 16 * mx + g;

  load_chunk(0, 0);
  for (int c = 0; c < p.nc; ++c) {
    const int st = c & 1;
    if (c + 1 < p.nc) {
      load_chunk(c + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    const Stage sb = stage_at<DK, BV>(smem, st);
    const bf16_t *sK = sb.k, *sQ = sb.q, *sV = sb.v, *sA = sb.a, *sP = sb.p;
    const float4* sC = sb.c;

#pragma unroll
    for (int j = 0; j < kSNT; ++j) {
      const int row = 16 * ms + g, col = 8 * (nb + j) + 2 * t4;
      store_bf16x2(sS + row * LDT + col, s[j][0], s[j][1]);
      store_bf16x2(sS + (row + 8) * LDT + col, s[j][2], s[j][3]);
    }
    __syncthreads();

    // X = K S0, Y = Q S0.
    float x[kTN][4] = {}, y[kTN][4] = {};
#pragma unroll
    for (int ks = 0; ks < DK / 16; ++ks) {
      uint32_t ak[4], aq[4];
      frag_a(ak, sK, LDK, 16 * mx, 16 * ks, lane);
      frag_a(aq, sQ, LDK, 16 * mx, 16 * ks, lane);
#pragma unroll
      for (int jp = 0; jp < kTN / 2; ++jp) {
        uint32_t bs[4];
        frag_b(bs, sS, LDT, 16 * ks, nx + 16 * jp, lane);
        mma_bf16_16816(x[2 * jp], ak, bs[0], bs[1]);
        mma_bf16_16816(x[2 * jp + 1], ak, bs[2], bs[3]);
        mma_bf16_16816(y[2 * jp], aq, bs[0], bs[1]);
        mma_bf16_16816(y[2 * jp + 1], aq, bs[2], bs[3]);
      }
    }

    // R = beta (V - exp(G) rk X) for rows r0 and r0 + 8.
    const float4 c0 = sC[r0], c1 = sC[r0 + 8];
    const float e0 = expf(c0.x), e1 = expf(c1.x);
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int col = nx + 8 * j + 2 * t4;
      const float2 v0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(sV + r0 * LDT + col));
      const float2 v1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(sV + (r0 + 8) * LDT + col));
      const float f0 = e0 * c0.y, f1 = e1 * c1.y;
      store_bf16x2(sR + r0 * LDT + col, c0.w * (v0.x - f0 * x[j][0]), c0.w * (v0.y - f0 * x[j][1]));
      store_bf16x2(sR + (r0 + 8) * LDT + col, c1.w * (v1.x - f1 * x[j][2]), c1.w * (v1.y - f1 * x[j][3]));
    }
    __syncthreads();

    // V' = Ainv R (Ainv is lower triangular: token blocks 0..mx).
    float vp[kTN][4] = {};
    lower_row_product<kTN>(vp, sA, LDC, sR, LDT, mx, nx, lane);
    const float g_last = sC[kChunk - 1].x;  // padding tokens carry G_last
    const float w0 = c0.y * expf(g_last - c0.x), w1 = c1.y * expf(g_last - c1.x);
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int col = nx + 8 * j + 2 * t4;
      store_bf16x2(sVn + r0 * LDT + col, vp[j][0], vp[j][1]);
      store_bf16x2(sVn + (r0 + 8) * LDT + col, vp[j][2], vp[j][3]);
      store_bf16x2(sVs + r0 * LDT + col, w0 * vp[j][0], w0 * vp[j][1]);
      store_bf16x2(sVs + (r0 + 8) * LDT + col, w1 * vp[j][2], w1 * vp[j][3]);
    }
    __syncthreads();

    // O = qc exp(G) Y + P V'.
    float oo[kTN][4] = {};
    lower_row_product<kTN>(oo, sP, LDC, sVn, LDT, mx, nx, lane);
    {
      const int t0 = c * kChunk, L = min(kChunk, p.T - t0);
      const float y0 = c0.z * e0, y1 = c1.z * e1;
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int row = r0 + 8 * hf;
        if (row >= L) continue;
        const float yf = hf ? y1 : y0;
        const int64_t off = ((static_cast<int64_t>(b) * p.T + t0 + row) * p.H + h) * p.dv + tile * BV;
#pragma unroll
        for (int j = 0; j < kTN; ++j) {
          const int col = nx + 8 * j + 2 * t4;
          const float lo = fmaf(yf, y[j][2 * hf], oo[j][2 * hf]), hi = fmaf(yf, y[j][2 * hf + 1], oo[j][2 * hf + 1]);
          if constexpr (kF32Out) {
            *reinterpret_cast<float2*>(static_cast<float*>(p.o) + off + col) = make_float2(lo, hi);
          } else {
            store_bf16x2(static_cast<bf16_t*>(p.o) + off + col, lo, hi);
          }
        }
      }
    }

    // S = exp(G_last) S0 + K^T (rk exp(G_last - G) V').
    const float decay = expf(g_last);
#pragma unroll
    for (int j = 0; j < kSNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] *= decay;
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      uint32_t ak[4];
      frag_a_t(ak, sK, LDK, 16 * ks, 16 * ms, lane);
#pragma unroll
      for (int jp = 0; jp < kSNT / 2; ++jp) {
        uint32_t bv[4];
        frag_b(bv, sVs, LDT, 16 * ks, 8 * nb + 16 * jp, lane);
        mma_bf16_16816(s[2 * jp], ak, bv[0], bv[1]);
        mma_bf16_16816(s[2 * jp + 1], ak, bv[2], bv[3]);
      }
    }
    // The next iteration's copy overwrites this chunk's stage.
    __syncthreads();
  }

#pragma unroll
  for (int j = 0; j < kSNT; ++j)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row = 16 * ms + g + 8 * hf, col = 8 * (nb + j) + 2 * t4;
      *reinterpret_cast<float2*>(sg + static_cast<int64_t>(row) * p.dv + col) = make_float2(s[j][2 * hf], s[j][2 * hf + 1]);
    }
}

template <class Kernel>
void allow_smem(Kernel kernel, int bytes) {
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <int DK, int BV>
void launch_scan(const Params& p, int B, bool f32_out) {
  constexpr int kScan = ScanLayout<DK, BV>::kBytes;
  static const bool configured = [] {
    allow_smem(delta_scan_kernel<DK, BV, true>, kScan);
    allow_smem(delta_scan_kernel<DK, BV, false>, kScan);
    return true;
  }();
  (void)configured;
  const dim3 grid(p.dv / BV, p.H, B);
  if (f32_out) delta_scan_kernel<DK, BV, true><<<grid, kScanThreads, kScan, stream()>>>(p);
  else delta_scan_kernel<DK, BV, false><<<grid, kScanThreads, kScan, stream()>>>(p);
  SUBQ_CUDA_CHECK_LAUNCH("delta_scan_kernel");
}

// 64 columns per scan CTA when dv allows it, the device has the shared memory, and
// the grid still gives most multiprocessors a sequence; else 32.
template <int DK>
int scan_tile(int64_t B, int64_t H, int64_t dv) {
  const DeviceInfo& dev = device_info();
  const bool fits = dev.shared_memory_optin >= static_cast<size_t>(ScanLayout<DK, 64>::kBytes);
  return fits && dv % 64 == 0 && 4 * B * H * (dv / 64) >= 3 * static_cast<int64_t>(dev.multiprocessors) ? 64 : 32;
}

template <int DK>
void launch(const Params& p, int B, bool f32_out) {
  constexpr int kPrep = PrepLayout<DK>::kBytes;
  static const bool configured = [] {
    allow_smem(delta_prepare_kernel<DK>, kPrep);
    return true;
  }();
  (void)configured;
  delta_prepare_kernel<DK><<<dim3(p.nc, p.H, B), kPrepThreads, kPrep, stream()>>>(p);
  SUBQ_CUDA_CHECK_LAUNCH("delta_prepare_kernel");
  if (scan_tile<DK>(B, p.H, p.dv) == 64) launch_scan<DK, 64>(p, B, f32_out);
  else launch_scan<DK, 32>(p, B, f32_out);
}

void check_gpu_tensor(const Tensor& t, DType dtype, const char* what) {
  if (!t.defined()) throw Error(std::string(what) + ": expected a tensor, found none");
  check_device(t, Device::cuda, what);
  check_dtype(t, dtype, what);
  check_contiguous(t, what);
}

void check_ndim(const Tensor& t, int64_t ndim, const char* what, const char* dims) {
  if (t.ndim() != ndim)
    throw Error(std::string(what) + ": expected " + std::to_string(ndim) + " dimensions " + dims + ", found " +
                t.str());
}

// Owns the per-call scratch; returning it to the caching allocator before the kernels
// finish is safe because every later user runs after them on the same stream.
struct Scratch {
  void* ptr = nullptr;
  explicit Scratch(size_t bytes) : ptr(device_alloc(bytes)) {}
  ~Scratch() { device_free(ptr); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

}  // namespace

void delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& log_gate,
                const Tensor& state, const Tensor& o, const ops::DeltaRuleOptions& options) {
  check_gpu_tensor(q, DType::bf16, "delta_rule q");
  check_gpu_tensor(k, DType::bf16, "delta_rule k");
  check_gpu_tensor(v, DType::bf16, "delta_rule v");
  if (!o.defined()) throw Error("delta_rule o: expected a tensor, found none");
  if (o.dtype() != DType::f32 && o.dtype() != DType::bf16)
    throw Error("delta_rule o: expected dtype bf16 or f32, found " + o.str());
  check_gpu_tensor(o, o.dtype(), "delta_rule o");
  check_ndim(q, 4, "delta_rule q", "[B, T, Hq, dk]");
  check_ndim(k, 4, "delta_rule k", "[B, T, Hk, dk]");
  check_ndim(v, 4, "delta_rule v", "[B, T, Hv, dv]");
  check_ndim(o, 4, "delta_rule o", "[B, T, H, dv]");
  const int64_t B = q.dim(0), T = q.dim(1), Hq = q.dim(2), dk = q.dim(3);
  const int64_t Hk = k.dim(2), Hv = v.dim(2), dv = v.dim(3);
  if (dk != 64 && dk != 128) throw Error("delta_rule q: key dim dk must be 64 or 128, found " + q.str());
  if (dv % kMinTile != 0 || dv < kMinTile || dv > 512)
    throw Error("delta_rule v: value dim dv must be a multiple of 32 in 32..512, found " + v.str());
  if (T < 1) throw Error("delta_rule q: expected T >= 1, found " + q.str());
  check_shape(k, Shape{B, T, Hk, dk}, "delta_rule k");
  check_shape(v, Shape{B, T, Hv, dv}, "delta_rule v");
  const int64_t H = std::max({Hq, Hk, Hv});
  for (const int64_t n : {Hq, Hk, Hv})
    if (n < 1 || H % n != 0)
      throw Error("delta_rule: head counts q " + std::to_string(Hq) + ", k " + std::to_string(Hk) + ", v " +
                  std::to_string(Hv) + " must each divide the largest, " + std::to_string(H));
  check_shape(o, Shape{B, T, H, dv}, "delta_rule o");
  check_gpu_tensor(beta, DType::f32, "delta_rule beta");
  check_shape(beta, Shape{B, T, H}, "delta_rule beta");
  if (log_gate.defined()) {
    check_gpu_tensor(log_gate, DType::f32, "delta_rule log_gate");
    check_shape(log_gate, Shape{B, T, H}, "delta_rule log_gate");
  }
  check_gpu_tensor(state, DType::f32, "delta_rule state");
  check_shape(state, Shape{B, H, dk, dv}, "delta_rule state");
  if (options.chunk != kChunk)
    throw Error("delta_rule: options.chunk must be 64 on the GPU (the tensor-core tile), found " +
                std::to_string(options.chunk));
  if (!std::isfinite(options.scale))
    throw Error("delta_rule: options.scale must be finite, found " + std::to_string(options.scale));
  if (options.l2_normalize_qk && !(options.l2_eps > 0.f && std::isfinite(options.l2_eps)))
    throw Error("delta_rule: options.l2_eps must be positive and finite, found " + std::to_string(options.l2_eps));
  const int64_t nc = (T + kChunk - 1) / kChunk;
  if (B > 65535 || H > 65535 || nc > (int64_t{1} << 30))
    throw Error("delta_rule: sizes exceed the kernels' grid limits: q " + q.str() + ", v " + v.str());
  if (B == 0) return;

  const size_t blocks = static_cast<size_t>(B * H * nc);
  const size_t tri_bytes = blocks * kChunk * kChunk * sizeof(bf16_t);
  Scratch scratch(2 * tri_bytes + blocks * kChunk * sizeof(float4));
  auto* base = static_cast<unsigned char*>(scratch.ptr);

  Params p{};
  p.q = reinterpret_cast<const bf16_t*>(q.device_data<bf16>());
  p.k = reinterpret_cast<const bf16_t*>(k.device_data<bf16>());
  p.v = reinterpret_cast<const bf16_t*>(v.device_data<bf16>());
  p.beta = beta.device_data<float>();
  p.log_gate = log_gate.defined() ? log_gate.device_data<float>() : nullptr;
  p.state = state.mutable_device_data<float>();
  p.o = o.dtype() == DType::f32 ? static_cast<void*>(o.mutable_device_data<float>())
                                : static_cast<void*>(o.mutable_device_data<bf16>());
  p.ainv = reinterpret_cast<bf16_t*>(base);
  p.p = reinterpret_cast<bf16_t*>(base + tri_bytes);
  p.coef = reinterpret_cast<float4*>(base + 2 * tri_bytes);
  p.T = static_cast<int>(T);
  p.H = static_cast<int>(H);
  p.Hq = static_cast<int>(Hq);
  p.Hk = static_cast<int>(Hk);
  p.Hv = static_cast<int>(Hv);
  p.dv = static_cast<int>(dv);
  p.nc = static_cast<int>(nc);
  p.l2 = options.l2_normalize_qk;
  p.eps = options.l2_eps;
  p.scale = options.scale;
  const bool f32_out = o.dtype() == DType::f32;
  if (dk == 64) launch<64>(p, static_cast<int>(B), f32_out);
  else launch<128>(p, static_cast<int>(B), f32_out);
}

}  // namespace subq::cuda
