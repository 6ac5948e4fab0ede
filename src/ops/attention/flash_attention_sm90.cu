// Flash forward on Hopper tensor cores: one CTA of two warpgroups per (128 queries, head,
// batch), head dim D = 64 or 128 (of one warpgroup per 64 queries for masks of 64-query
// blocks). Each warpgroup owns 64 query rows: S = Q K^T for a tile of kBlockN keys is one
// chain of D / 16 m64nNk16 wgmmas reading Q and K from shared memory, the online softmax
// runs on S in registers (the m16n8 accumulator layout of the sm_80 kernel, so it shares
// the masking and softmax code), and O += P V is kBlockN / 16 m64nDk16 wgmmas with P
// packed to bf16 in registers and V read from shared memory as stored, key rows of D
// contiguous values (MN-major). Q, K and V tiles are copied by cp.async into the 128-byte
// swizzled layout the descriptors read (wgmma.cuh); K/V tiles are double-buffered. Dense
// rows run software-pipelined (below), mask rows one tile at a time (forward() says why).
//
// Built for sm_90a only (cmake/cuda.cmake): wgmma exists nowhere else, and a separate
// object keeps the rest of the library's sm_80 / sm_90 code as it is.
#include <cuda_bf16.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/core/cuda/mma.cuh"
#include "src/core/cuda/wgmma.cuh"
#include "src/ops/attention/flash_attention_sm90.h"

namespace subq::cuda::flash {
namespace {

// Shared memory: Q (kBlockM rows), then two K and two V tiles of kBlockN keys, each D / 64
// blocks of 64 columns; plus slack to align the start to a 1024-byte swizzle atom.
template <int D, int kBlockM, int kBlockN>
constexpr int kSmemBytes = (kBlockM + 4 * kBlockN) * D * 2 + 1024;

// Tells the compiler the accumulators change here (after a wgmma wait), so that no read
// of them moves above it: the asynchronous wgmma writes them behind its back.
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Rows [0, valid) of an [R][D] bf16 tile from global rows `ld` apart into the swizzled
// layout (D / 64 [R][64] column blocks), by cp.async from kThreads threads; rows past
// `valid` are zero-filled and read from `safe` instead.
template <int D, int R, int kThreads>
__device__ __forceinline__ void load_swizzled(unsigned char* dst, const __nv_bfloat16* g, int64_t ld, int valid,
                                              const __nv_bfloat16* safe) {
  constexpr int kChunks = D / 8;
  static_assert(R * kChunks % kThreads == 0);
#pragma unroll
  for (int i = 0; i < R * kChunks / kThreads; ++i) {
    const int idx = i * kThreads + static_cast<int>(threadIdx.x);
    const int r = idx / kChunks, c = idx % kChunks;
    const bool ok = r < valid;
    cp_async_16(dst + (c >> 3) * (R * 128) + sw128_offset(r, (c & 7) * 8), ok ? g + r * ld + c * 8 : safe, ok);
  }
}

// `odd` if kOdd, else `even`: a compile-time choice between two register arrays.
template <bool kOdd, class A>
__device__ __forceinline__ A& either(A& even, A& odd) {
  if constexpr (kOdd) return odd;
  else return even;
}

// Pipelined (kPipelined), the loop overlaps tiles: while the tensor cores run tile j's
// Q K^T and tile j - 1's P V, the warpgroup's softmax waits only for the first; the
// second is waited for just before the accumulator is rescaled. Copies run two tiles
// ahead for K and one for V: at tile j, K_{j+2} and V_{j+1} load into the buffers that
// K_j and V_{j-1} leave. Each group of copies is committed even when empty, so that
// cp.async.wait_group 1 always means "all but the newest".
template <int kD, Keys kKeys, int kBlockN, bool kPipelined, int kWarpgroups>
__global__ void __launch_bounds__(128 * kWarpgroups, 1) flash_forward_sm90_kernel(const Params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kBlockM = 64 * kWarpgroups, kThreads = 128 * kWarpgroups, kQBytes = kBlockM * kD * 2;
  constexpr bool kListed = kKeys == Keys::listed;
  constexpr int kTileBytes = kBlockN * kD * 2;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* sQ = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  unsigned char* sK = sQ + kQBytes;          // two tiles
  unsigned char* sV = sK + 2 * kTileBytes;  // two tiles

  // Causal blocks with the most keys start first, so the tail of the grid is short.
  const int qb = gridDim.x - 1 - blockIdx.x;
  const int m0 = qb * kBlockM;
  const int h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x >> 5, wg = warp >> 2;
  const int row0 = m0 + warp * 16;  // this warp's first row (warpgroup wg: rows 64 wg ..)

  const auto [q, k, v, q_ld, kv_ld] = head_rows<kD>(p, b, h, m0);
  auto tiles = cta_key_tiles<kKeys, kBlockN>(p, b, h, qb, m0, kBlockM);
  const int q_first = p.q_offset + m0, q_last = p.q_offset + min(m0 + kBlockM, p.tq) - 1;
  const auto load_k = [&](int buf, const Tile& t) {
    if (t.rows) load_swizzled<kD, kBlockN, kThreads>(sK + buf * kTileBytes, k + t.start * kv_ld, kv_ld, p.tk - t.start, k);
  };
  const auto load_v = [&](int buf, const Tile& t) {
    if (t.rows) load_swizzled<kD, kBlockN, kThreads>(sV + buf * kTileBytes, v + t.start * kv_ld, kv_ld, p.tk - t.start, v);
  };

  float acc[1][kD / 8][4];
  float row_max[1][2] = {{-INFINITY, -INFINITY}}, row_sum[1][2] = {{0.f, 0.f}};
#pragma unroll
  for (int dt = 0; dt < kD / 8; ++dt)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[0][dt][c] = 0.f;
  float(&o)[kD / 2] = reinterpret_cast<float(&)[kD / 2]>(acc);
  float s[1][kBlockN / 8][4];
  float(&sf)[kBlockN / 2] = reinterpret_cast<float(&)[kBlockN / 2]>(s);
  // P of two consecutive tiles: P V of one may still read its registers (wgmma reads A
  // asynchronously) while the softmax of the next writes the other.
  uint32_t pa_even[kBlockN / 16][4], pa_odd[kBlockN / 16][4];

  // S = Q K^T for the tile in K buffer kbuf: 16 columns of D per wgmma, 64 per column
  // block (32 bytes into its rows); issued, not waited for.
  const auto issue_scores = [&](int kbuf) {
#pragma unroll
    for (int i = 0; i < kBlockN / 2; ++i) sf[i] = 0.f;
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      const int block = ks >> 2, within = (ks & 3) * 32;
      const uint64_t a = sw128_desc(sQ + block * (kBlockM * 128) + wg * (64 * 128) + within, 16, 1024);
      const uint64_t bk = sw128_desc(sK + kbuf * kTileBytes + block * (kBlockN * 128) + within, 16, 1024);
      if constexpr (kBlockN == 64) wgmma_m64n64k16_ss(sf, a, bk, ks > 0);
      else wgmma_m64n128k16_ss(sf, a, bk, ks > 0);
    }
    wgmma_commit();
  };
  // O += P V for the tile in V buffer vbuf, P from pa; issued, not waited for.
  const auto issue_values = [&](int vbuf, const uint32_t (&pa)[kBlockN / 16][4]) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk)
      if constexpr (kD == 64)
        wgmma_m64n64k16_rs_mn(o, pa[kk], sw128_desc(sV + vbuf * kTileBytes + kk * 16 * 128, kBlockN * 128, 1024));
      else
        wgmma_m64n128k16_rs_mn(o, pa[kk], sw128_desc(sV + vbuf * kTileBytes + kk * 16 * 128, kBlockN * 128, 1024));
    wgmma_commit();
  };
  // Masks, softmax and packs the scores of tile t into pa; fills corr with the
  // accumulator's correction (the caller applies it once the previous P V is done) and
  // returns whether any of the warp's rows needs it.
  const auto softmax_tile = [&](const Tile& t, float (&corr)[1][2], uint32_t (&pa)[kBlockN / 16][4]) {
    const int n0 = t.start;
    bool edge = n0 + kBlockN > p.tk;
    if constexpr (kKeys == Keys::causal) edge |= n0 + kBlockN - 1 > m0 + p.causal_offset;
    if constexpr (kListed) edge |= !rule_covers(p.rule, q_first, q_last, n0, n0 + kBlockN - 1);
    if (edge) mask_edge_tile<kKeys, 1, kBlockN>(s, p, row0, n0);
    const bool moved = online_softmax<1, kBlockN>(s, row_max, row_sum, corr, p.scale_log2);
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      pa[kk][0] = pack_bf16x2(s[0][2 * kk][0], s[0][2 * kk][1]);
      pa[kk][1] = pack_bf16x2(s[0][2 * kk][2], s[0][2 * kk][3]);
      pa[kk][2] = pack_bf16x2(s[0][2 * kk + 1][0], s[0][2 * kk + 1][1]);
      pa[kk][3] = pack_bf16x2(s[0][2 * kk + 1][2], s[0][2 * kk + 1][3]);
    }
    return __any_sync(0xffffffffu, moved);
  };
  const auto rescale = [&](const float (&corr)[1][2]) {
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[0][dt][c] *= corr[0][c >> 1];
  };

  if constexpr (!kPipelined) {
    // One tile at a time: its copies were issued a tile ahead.
    Tile cur = tiles.next(), nxt = tiles.next();
    load_swizzled<kD, kBlockM, kThreads>(sQ, q, q_ld, p.tq - m0, p.q);
    load_k(0, cur);
    load_v(0, cur);
    cp_async_commit();
    for (int j = 0; cur.rows; ++j) {
      load_k((j + 1) & 1, nxt);
      load_v((j + 1) & 1, nxt);
      cp_async_commit();
      cp_async_wait<1>();
      fence_proxy_async();
      __syncthreads();
      const Tile after = tiles.next();
      issue_scores(j & 1);
      wgmma_wait<0>();
      fence_operands(sf);
      float corr[1][2];
      if (softmax_tile(cur, corr, pa_even)) rescale(corr);
      issue_values(j & 1, pa_even);
      wgmma_wait<0>();
      fence_operands(o);
      __syncthreads();  // the next copies overwrite this tile's buffers
      cur = nxt;
      nxt = after;
    }
  } else {
    // Tiles j (cur), j + 1 and j + 2, chosen in order.
    Tile cur = tiles.next(), nxt = tiles.next(), nxt2 = tiles.next();
    // Copy groups: {Q, K_0}, then {K_1, V_0}.
    load_swizzled<kD, kBlockM, kThreads>(sQ, q, q_ld, p.tq - m0, p.q);
    load_k(0, cur);
    cp_async_commit();
    load_k(1, nxt);
    load_v(0, cur);
    cp_async_commit();

    if (cur.rows) {
      cp_async_wait<1>();
      fence_proxy_async();
      __syncthreads();
      issue_scores(0);
      wgmma_wait<0>();
      fence_operands(sf);
      float corr[1][2];
      softmax_tile(cur, corr, pa_even);  // the accumulator is still zero: nothing to rescale
      __syncthreads();  // every warpgroup is done with K_0
      load_k(0, nxt2);
      load_v(1, nxt);
      cp_async_commit();
    }
    // Tile j's scores and softmax beside tile j - 1's P V; `odd` is j's parity (which P
    // registers tile j fills), a compile-time choice so that they stay registers.
    int last = 0;  // index of cur
    const auto step = [&](int j, auto odd) {
      cp_async_wait<1>();  // copies of K_j and V_{j-1} landed (all but the newest group)
      fence_proxy_async();
      __syncthreads();
      issue_scores(j & 1);
      issue_values((j - 1) & 1, either<!decltype(odd)::value>(pa_even, pa_odd));
      wgmma_wait<1>();  // the scores; P V may still run
      fence_operands(sf);
      float corr[1][2];
      const bool moved = softmax_tile(nxt, corr, either<decltype(odd)::value>(pa_even, pa_odd));
      wgmma_wait<0>();
      fence_operands(o);
      if (moved) rescale(corr);
      __syncthreads();  // every warpgroup is done with K_j and V_{j-1}
      cur = nxt;
      nxt = nxt2;
      nxt2 = tiles.next();
      last = j;
      load_k((j + 2) & 1, nxt2);  // K_{j+2} where K_j was
      load_v((j + 1) & 1, nxt);   // V_{j+1} where V_{j-1} was
      cp_async_commit();
    };
    for (int j = 1; nxt.rows; ++j) {
      if (j & 1) step(j, std::true_type());
      else step(j, std::false_type());
    }
    if (cur.rows) {
      // The last tile's P V; its V copy is in the older group.
      cp_async_wait<1>();
      fence_proxy_async();
      __syncthreads();
      if (last & 1) issue_values(1, pa_odd);
      else issue_values(0, pa_even);
    }
  }
  cp_async_wait<0>();
  wgmma_wait<0>();
  fence_operands(o);
  store_output<1, kD>(acc, row_sum, p.o + static_cast<int64_t>(b) * p.tq * q_ld + h * kD, q_ld, row0, p.tq);
#else
  __trap();  // built for sm_90a only; sm90_available() keeps other GPUs away
#endif
}

template <int D, Keys kKeys, int kBlockN, bool kPipelined, int kWarpgroups>
void launch(const Params& p, int batch) {
  constexpr int kBlockM = 64 * kWarpgroups, kSmem = kSmemBytes<D, kBlockM, kBlockN>;
  static const bool configured = [] {
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(flash_forward_sm90_kernel<D, kKeys, kBlockN, kPipelined, kWarpgroups>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    return true;
  }();
  (void)configured;
  const dim3 grid((p.tq + kBlockM - 1) / kBlockM, p.heads, batch);
  flash_forward_sm90_kernel<D, kKeys, kBlockN, kPipelined, kWarpgroups><<<grid, 128 * kWarpgroups, kSmem, stream()>>>(p);
  SUBQ_CUDA_CHECK_LAUNCH("flash_forward_sm90_kernel");
}

}  // namespace

bool sm90_available() {
  static const bool wgmma_off = [] {
    const char* v = std::getenv("SUBQ_FLASH_WGMMA");
    return v && std::strcmp(v, "0") == 0;
  }();
  const DeviceInfo& d = device_info();
  return !wgmma_off && d.major == 9 && d.minor == 0;
}

namespace {

template <int D>
void forward(Params p, int batch, Keys keys, int q_block, int k_block) {
  // Dense rows run pipelined over 128-key tiles; mask rows one 64-key tile at a time.
  // Measured on an H200 (bench/cuda attention and sparse, all four combinations): dense
  // causal 425 TFLOP/s pipelined at 128 keys against 415 (one at a time, 128), 394
  // (pipelined, 64) and 369 (one at a time, 64); the window and random masks of 128-key
  // blocks ran fastest one 64-key tile at a time (2.25 / 1.87 ms at 32K, against 2.44-2.53
  // / 1.79-1.91 for the others): their rows are 17-26 blocks long, too short to fill and
  // drain a pipeline, and a CTA holds its SM alone (190-250 registers per thread).
  // 64-query mask rows take a CTA of one warpgroup (two CTAs share an SM).
  if (keys == Keys::all) {
    launch<D, Keys::all, 128, true, 2>(p, batch);
  } else if (keys == Keys::causal) {
    launch<D, Keys::causal, 128, true, 2>(p, batch);
  } else if (keys == Keys::listed) {
    p.sub_tiles = k_block / 64;
    if (q_block == 64) launch<D, Keys::listed, 64, false, 1>(p, batch);
    else launch<D, Keys::listed, 64, false, 2>(p, batch);
  } else {
    throw Error("flash_attention: the sm_90 kernel does not run paired mask rows");
  }
}

}  // namespace

void sm90_forward(Params p, int batch, int head_dim, Keys keys, int q_block, int k_block) {
  if (head_dim == 64) forward<64>(p, batch, keys, q_block, k_block);
  else if (head_dim == 128) forward<128>(p, batch, keys, q_block, k_block);
  else throw Error("flash_attention: the sm_90 kernel runs head dims 64 and 128, found " + std::to_string(head_dim));
}

}  // namespace subq::cuda::flash
