// Flash forward on Hopper: warp-specialized, persistent CTAs whose Q K^T and P V run on
// wgmma. Head dims 64 and 128 (and 256 for dense rows); CTAs of two math warpgroups per
// 128 queries, one per 64 for masks of 64-query blocks. Each math warpgroup owns 64 query
// rows: S = Q K^T for a tile of kBlockN keys is one chain of D / 16 m64nNk16 wgmmas
// reading Q and K from shared memory, the online softmax runs on S in registers (the
// m16n8 accumulator layout of the sm_80 kernel, so it shares the masking and softmax
// code), and O += P V is kBlockN / 16 m64nDk16 wgmmas with P packed to bf16 in registers
// and V read from shared memory as stored, key rows of D contiguous values (MN-major). A
// copy warpgroup feeds them Q, K and V tiles by TMA in the 128-byte swizzled layout the
// descriptors read (wgmma.cuh, tma.cuh).
//
// Built for sm_90a only (cmake/cuda.cmake): wgmma and setmaxnreg exist nowhere else, and a
// separate object keeps the rest of the library's sm_80 / sm_90 code as it is.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/core/cuda/mma.cuh"
#include "src/core/cuda/tma.cuh"
#include "src/core/cuda/wgmma.cuh"
#include "src/ops/attention/flash_attention_sm90.h"

namespace subq::cuda::flash {
namespace {

// Tells the compiler the accumulators change here (after a wgmma wait), so that no read
// of them moves above it: the asynchronous wgmma writes them behind its back.
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// `odd` if kOdd, else `even`: a compile-time choice between two register arrays.
template <bool kOdd, class A>
__device__ __forceinline__ A& either(A& even, A& odd) {
  if constexpr (kOdd) return odd;
  else return even;
}

// The tensor maps of a call: q, k, v and o as 4-D tensors (head dim, heads, tokens,
// batch), boxes of 64 columns by a tile's rows of one head (o: a math warpgroup's 64
// rows), 128-byte swizzled.
struct TensorMaps {
  CUtensorMap q, k, v, o;
};

// A CTA's dynamic shared memory: kQBuffers Q tiles and kStages K and V tiles, 1 KiB more
// to align the start for the swizzle. Two Q buffers where they fit (all but head dim 256),
// so that the next item's Q loads while the current item runs (with one, the copy warp
// could issue it only after the item's last Q K^T: on short mask rows its load and the
// item's handover took ~10% of the math warps' time). For head dim 128 (kStagedOutput)
// each math warpgroup also stages its output rows in its own rows of the item's Q buffer,
// which its Q K^T no longer reads. Head dim 64's dense rows measured 0.96x with the
// output staged (their stores from registers are half as many).
template <int kD, int kBlockN, int kConsumers, int kStages>
struct SharedLayout {
  static constexpr int kBlockM = 64 * kConsumers, kQBytes = kBlockM * kD * 2, kTileBytes = kBlockN * kD * 2;
  static constexpr int kTiles = 2 * kStages * kTileBytes + 1024;
  // An SM has 228 KiB for its 3 - kConsumers CTAs, each also 1 KiB reserved and its
  // barriers.
  static constexpr int kQBuffers = (2 * kQBytes + kTiles + 2048) * (3 - kConsumers) <= 228 * 1024 ? 2 : 1;
  static constexpr bool kStagedOutput = kD == 128;
  static_assert(!kStagedOutput || kQBuffers == 2);
  static constexpr int kBytes = kQBuffers * kQBytes + kTiles;
};

// Warpgroup 0 copies (one thread of its first warp issues TMA loads), warpgroups
// 1 .. kConsumers compute. Persistent: a CTA per SM (two with one math warpgroup) takes
// work items (64 kConsumers queries of a head and batch element) one after another, so
// that the copies of an item's first tiles run while the math warpgroups finish the
// previous one. Items are handed out in order by an atomic counter (schedule[0]) as CTAs
// free up (a static split of items measured 8-15% slower on dense causal rows); the copy
// warp draws the next item as soon as it has issued the current one's last tile, reads
// its mask row, issues its first K and V tile, then its Q, then the rest (kQFirst: Q
// before the first tile). With one Q buffer, waiting for it first measured 0.88-0.96x on
// full dense rows; with two, H100: full dense rows 0.94-0.96x Q first, the 64-query CTAs'
// masks 1.02-1.05x Q first (so those CTAs issue Q first). The last CTA to finish
// zeroes the counters for the next launch (schedule[1] counts finished CTAs). K and V
// tiles go through kStages buffers, each with a "full" barrier (the TMA's bytes landed)
// and an "empty" one (every math warp is done with it); item n's Q goes to Q buffer
// n % kQBuffers, released after the item's last Q K^T (or, staged output, once the
// output's store has read it). Both sides walk the same items and key tiles, so a tile's
// buffer is its index in that walk modulo kStages.
//
// For head dim 128 a math warpgroup ends an item by writing its 64 normalized output rows
// into its rows of the item's Q buffer and handing them to one TMA store, which runs on
// while the warpgroup starts its next item (clock stamps put the direct stores from
// registers, 4 bytes per thread and row, at 1,800-2,700 cycles of every item's path); for
// head dims 64 and 256 it stores them from registers (SharedLayout says why).
//
// Pipelined (kPipelined), a math warpgroup overlaps tiles: while the tensor cores run tile
// j's Q K^T and tile j - 1's P V, its softmax waits only for the first; the second is
// waited for just before the accumulator is rescaled.
template <int kD, Keys kKeys, int kBlockN, bool kPipelined, int kConsumers, int kStages, bool kNeighborhood>
__global__ void __launch_bounds__(128 * (kConsumers + 1), 3 - kConsumers)
    flash_forward_sm90_kernel(const __grid_constant__ Params p, const __grid_constant__ TensorMaps maps, int batch,
                              int* schedule) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Layout = SharedLayout<kD, kBlockN, kConsumers, kStages>;
  constexpr int kBlockM = Layout::kBlockM, kQBytes = Layout::kQBytes, kTileBytes = Layout::kTileBytes;
  constexpr int kConsumerWarps = 4 * kConsumers;
  constexpr bool kListed = kKeys == Keys::listed;
  constexpr int kQBuffers = Layout::kQBuffers;
  constexpr bool kQFirst = kQBuffers == 2 && kConsumers == 1;
  extern __shared__ unsigned char smem_raw[];
  __shared__ uint64_t q_full[kQBuffers], q_empty[kQBuffers];
  __shared__ uint64_t k_full[kStages], k_empty[kStages], v_full[kStages], v_empty[kStages];
  __shared__ uint64_t item_full[2], item_empty[2];
  // The items being copied (-1 once none is left) and their tile counts; the first key of
  // the tile in each K/V stage.
  __shared__ int item_drawn[2], item_tiles[2], tile_start[kStages];
  unsigned char* sQ =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  unsigned char* sK = sQ + kQBuffers * kQBytes;
  unsigned char* sV = sK + kStages * kTileBytes;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kQBuffers; ++s) {
      mbar_init(&q_full[s], 1);
      // Released by every math warp after its last Q K^T, or, where the buffer also stages
      // the output, by each warpgroup's store once it has read it.
      mbar_init(&q_empty[s], Layout::kStagedOutput ? kConsumers : kConsumerWarps);
    }
    for (int s = 0; s < 2; ++s) {
      mbar_init(&item_full[s], 1);
      mbar_init(&item_empty[s], kConsumerWarps);
    }
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&k_full[s], 1);
      mbar_init(&v_full[s], 1);
      mbar_init(&k_empty[s], kConsumerWarps);
      mbar_init(&v_empty[s], kConsumerWarps);
    }
    mbar_init_fence();
  }
  __syncthreads();

  const int num_qb = (p.tq + kBlockM - 1) / kBlockM, heads_batch = p.heads * batch;
  const int items = num_qb * heads_batch;
  // Item i: query blocks fastest, those with the most causal keys first, then heads, then
  // batch. CTAs running at the same time then read one head's keys and values, which stay
  // in L2 (against heads fastest, one H200 call: full rows at 64K 1.19x, a 2048-key window
  // at 32K 1.17x; later calls put the full rows' gain nearer 1.1x), and the last items
  // handed out are short causal rows.
  const auto item_coords = [&](int i, int& qb, int& h, int& b) {
    qb = num_qb - 1 - i % num_qb;
    h = i / num_qb % p.heads;
    b = i / num_qb / p.heads;
  };

  // The copy warp hands item n to the math warps in slot n % 2 (index and tile count),
  // announcing it on item_full once it has issued the item's Q and first tile (so that
  // their loads overlap the previous item's last tiles); each math warp releases the slot
  // on item_empty once it has read it. (A named barrier that both roles reached from
  // their own code was what compute-sanitizer's synccheck reported: bar.sync expects
  // every participating thread at the same instruction.)
  if (threadIdx.x < 128) {
    warpgroup_release_registers<40>();
    if (threadIdx.x >= 32) return;
    const bool leader = threadIdx.x == 0;
    const auto draw = [&] {
      int i = 0;
      if (leader) i = atomicAdd(&schedule[0], 1);
      return __shfl_sync(0xffffffffu, i, 0);
    };
    uint32_t it = 0;
    int i = draw();
    for (uint32_t n = 0;; ++n) {
      const int slot = n & 1;
      mbar_wait(&item_empty[slot], ((n >> 1) & 1) ^ 1);
      if (leader) item_drawn[slot] = i < items ? i : -1;
      if (i >= items) {
        if (leader) mbar_arrive(&item_full[slot]);
        break;
      }
      int qb, h, b;
      item_coords(i, qb, h, b);
      const int m0 = qb * kBlockM, kvh = h / p.group;
      // Tile t of K and V into stage it % kStages once the math warps have released it;
      // a mask's tile has its first key in tile_start, times two plus whether it needs
      // scores masked (the math warps read it once K has landed: the arrival that
      // announces K's bytes releases the store).
      const int q_first = p.q_offset + m0, q_last = p.q_offset + min(m0 + kBlockM, p.tq) - 1;
      const auto load_tile = [&](const Tile& t) {
        const int s = it % kStages;
        const uint32_t parity = ((it / kStages) & 1) ^ 1;
        const auto load = [&](unsigned char* dst, const CUtensorMap& map, uint64_t* full) {
          mbar_arrive_expect_bytes(full, kTileBytes);
#pragma unroll
          for (int c = 0; c < kD / 64; ++c)
            tma_load_4d(dst + s * kTileBytes + c * kBlockN * 128, &map, c * 64, kvh, t.start, b, full);
        };
        mbar_wait(&k_empty[s], parity);
        if (leader) {
          if constexpr (kListed) {
            const int n1 = t.start + kBlockN - 1;
            tile_start[s] = 2 * t.start + (n1 >= p.tk || !rule_covers(p.rule, q_first, q_last, t.start, n1));
          }
          load(sK, maps.k, &k_full[s]);
        }
        mbar_wait(&v_empty[s], parity);
        if (leader) load(sV, maps.v, &v_full[s]);
        ++it;
      };
      // Q into buffer n % kQBuffers, then the item goes to the math warps.
      const auto load_q = [&] {
        const int qn = n % kQBuffers;
        mbar_wait(&q_empty[qn], ((n / kQBuffers) & 1) ^ 1);
        if (leader) {
          mbar_arrive_expect_bytes(&q_full[qn], kQBytes);
#pragma unroll
          for (int c = 0; c < kD / 64; ++c)
            tma_load_4d(sQ + qn * kQBytes + c * kBlockM * 128, &maps.q, c * 64, h, m0, b, &q_full[qn]);
          mbar_arrive(&item_full[slot]);
        }
      };
      auto tiles = cta_key_tiles<kKeys, kBlockN>(p, b, h, m0, kBlockM);
      if (leader) item_tiles[slot] = tiles.count();
      if constexpr (kQFirst) load_q();
      Tile t = tiles.next();
      if constexpr (!kQFirst) {
        if (t.rows) {
          load_tile(t);
          t = tiles.next();
        }
        load_q();
      }
      for (; t.rows; t = tiles.next()) load_tile(t);
      i = draw();
    }
    if (!leader) return;
    __threadfence();  // this CTA's draws land before it counts itself finished
    if (atomicAdd(&schedule[1], 1) == static_cast<int>(gridDim.x) - 1) {
      atomicExch(&schedule[0], 0);
      atomicExch(&schedule[1], 0);
    }
    return;
  }

  warpgroup_claim_registers<kConsumers == 1 ? 216 : 232>();
  const int warp = (threadIdx.x >> 5) - 4, wg = warp >> 2, lane = threadIdx.x & 31;
  // Lane 0 of each math warp reports the warp done with a buffer: every lane has passed
  // the wgmma wait that ends the warpgroup's reads of it.
  const auto release = [&](uint64_t* bar) {
    if (lane == 0) mbar_arrive(bar);
  };
  const auto buf = [](uint32_t j) { return static_cast<int>(j % kStages); };
  // The first key of the item's tile j, in K buffer kbuf, times two plus whether it is an
  // edge tile for a mask: dense rows' tiles follow one another; a mask's come from
  // tile_start, read by lane 0 alone (whose release of the buffer then orders its read
  // before the copy warp's next write) and broadcast.
  const auto tile_key = [&](int j, int kbuf) {
    if constexpr (!kListed) return 2 * j * kBlockN;
    int key = 0;
    if (lane == 0) key = tile_start[kbuf];
    return __shfl_sync(0xffffffffu, key, 0);
  };
  const auto phase = [](uint32_t j) { return (j / kStages) & 1; };
  uint32_t n = 0;  // this CTA's items so far; item n's Q is in buffer n % kQBuffers
  const auto item_q = [&] { return sQ + n % kQBuffers * kQBytes; };

  float acc[1][kD / 8][4];
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
      const uint64_t a = sw128_desc(item_q() + block * (kBlockM * 128) + wg * (64 * 128) + within, 16, 1024);
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
      else if constexpr (kD == 128)
        wgmma_m64n128k16_rs_mn(o, pa[kk], sw128_desc(sV + vbuf * kTileBytes + kk * 16 * 128, kBlockN * 128, 1024));
      else
        wgmma_m64n256k16_rs_mn(o, pa[kk], sw128_desc(sV + vbuf * kTileBytes + kk * 16 * 128, kBlockN * 128, 1024));
    wgmma_commit();
  };
  const auto rescale = [&](const float (&corr)[1][2]) {
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[0][dt][c] *= corr[0][c >> 1];
  };
  // The first thread of each math warpgroup issues its TMA stores; the warpgroup's own
  // named barrier (2 + wg) orders their shared memory around them.
  const bool store_issuer = (threadIdx.x & 127) == 0;
  const auto sync_warpgroup = [&] {  // ids known at compile time, so ptxas reserves only these
    if (wg == 0) named_barrier_sync(2, 128);
    else named_barrier_sync(3, 128);
  };
  // This warpgroup's 64 rows of the item's output, divided by their sums, as bf16 into its
  // rows of the item's Q buffer (four 8 x 8 blocks of 16 columns per stmatrix; its warps
  // are past their last Q K^T) and on by TMA; rows past tq are outside the tensor map, so
  // the store leaves them.
  const auto stage_output = [&](const float (&row_sum)[1][2], int m0, int h, int b) {
    unsigned char* sO = item_q();
    sync_warpgroup();  // the warpgroup's last Q K^T, which reads all its Q rows, is done
    const float inv[2] = {inverse_row_sum(row_sum[0][0]), inverse_row_sum(row_sum[0][1])};
    const int block = lane >> 3, row = warp * 16 + (block & 1) * 8 + (lane & 7);
#pragma unroll
    for (int dt = 0; dt < kD / 8; dt += 2) {
      const uint32_t r[4] = {pack_bf16x2(acc[0][dt][0] * inv[0], acc[0][dt][1] * inv[0]),
                             pack_bf16x2(acc[0][dt][2] * inv[1], acc[0][dt][3] * inv[1]),
                             pack_bf16x2(acc[0][dt + 1][0] * inv[0], acc[0][dt + 1][1] * inv[0]),
                             pack_bf16x2(acc[0][dt + 1][2] * inv[1], acc[0][dt + 1][3] * inv[1])};
      const int col = (dt + (block >> 1)) * 8;
      stmatrix_x4(sO + col / 64 * (kBlockM * 128) + sw128_offset(row, col % 64), r);
    }
    fence_proxy_async();
    sync_warpgroup();
    if (store_issuer) {
#pragma unroll
      for (int c = 0; c < kD / 64; ++c)
        tma_store_4d(&maps.o, c * 64, h, m0 + wg * 64, b, sO + c * (kBlockM * 128) + wg * (64 * 128));
      bulk_commit();
    }
  };
  // The previous item's Q buffer goes back to the copy warp once the store issuer's last
  // store has read it: checked after the next item's first Q K^T is issued, by which
  // time it has.
  const auto retire_store = [&] {
    if constexpr (Layout::kStagedOutput)
      if (store_issuer && n > 0) {
        bulk_wait_read();
        mbar_arrive(&q_empty[(n - 1) % kQBuffers]);
      }
  };

  uint32_t it = 0;
  for (;; ++n) {
    const int slot = n & 1;
    mbar_wait(&item_full[slot], (n >> 1) & 1);
    int i = 0, tiles = 0;
    if (lane == 0) {  // one read per warp, which its own release then orders
      i = item_drawn[slot];
      tiles = item_tiles[slot];
      mbar_arrive(&item_empty[slot]);
    }
    i = __shfl_sync(0xffffffffu, i, 0);
    tiles = __shfl_sync(0xffffffffu, tiles, 0);
    if (i < 0) break;
    const int qn = n % kQBuffers;
    mbar_wait(&q_full[qn], (n / kQBuffers) & 1);
    // Every math warp is done with Q after its last Q K^T, unless the buffer stages the
    // output (retire_store releases it).
    const auto release_q = [&] {
      if constexpr (!Layout::kStagedOutput) release(&q_empty[qn]);
    };
    int qb, h, b;
    item_coords(i, qb, h, b);
    const int m0 = qb * kBlockM, row0 = m0 + warp * 16;  // row0: this warp's first row
    float row_max[1][2] = {{-INFINITY, -INFINITY}}, row_sum[1][2] = {{0.f, 0.f}};
    // Masks, softmax and packs the scores of the tile with key `key` (tile_key's) into pa;
    // fills corr with the accumulator's correction (the caller applies it once the
    // previous P V is done) and returns whether any of the warp's rows needs it.
    const auto softmax_tile = [&](int key, float (&corr)[1][2], uint32_t (&pa)[kBlockN / 16][4]) {
      const int n0 = key >> 1;
      bool edge = key & 1;
      if constexpr (!kListed) edge = n0 + kBlockN > p.tk;
      if constexpr (kKeys == Keys::causal) edge |= n0 + kBlockN - 1 > m0 + p.causal_offset;
      if (edge) mask_edge_tile<kKeys, 1, kBlockN, kNeighborhood>(s, p, row0, n0);
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
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[0][dt][c] = 0.f;
    // The copy warp publishes the item's tile count and each mask tile's first key, so
    // the math warps never read the mask themselves (its dependent global loads sat on
    // their path at every item's start).
    if (tiles == 0) {
      release_q();
      retire_store();
    }
    if constexpr (!kPipelined) {
      for (int j = 0; j < tiles; ++j, ++it) {
        mbar_wait(&k_full[buf(it)], phase(it));
        const int key = tile_key(j, buf(it));
        issue_scores(buf(it));
        if (j == 0) retire_store();
        wgmma_wait<0>();
        fence_operands(sf);
        release(&k_empty[buf(it)]);
        if (j == tiles - 1) release_q();
        float corr[1][2];
        if (softmax_tile(key, corr, pa_even)) rescale(corr);
        mbar_wait(&v_full[buf(it)], phase(it));
        issue_values(buf(it), pa_even);
        wgmma_wait<0>();
        fence_operands(o);
        release(&v_empty[buf(it)]);
      }
    } else if (tiles > 0) {
      mbar_wait(&k_full[buf(it)], phase(it));
      const int key = tile_key(0, buf(it));
      issue_scores(buf(it));
      retire_store();
      wgmma_wait<0>();
      fence_operands(sf);
      release(&k_empty[buf(it)]);
      if (tiles == 1) release_q();
      float corr[1][2];
      softmax_tile(key, corr, pa_even);  // the accumulator is still zero: nothing to rescale
      // `it` is the tile whose P V is pending, j the next one's place in the item; `odd`
      // the parity of j (which P registers it fills), a compile-time choice so that they
      // stay registers.
      const auto step = [&](int j, auto odd) {
        const uint32_t next = it + 1;
        mbar_wait(&k_full[buf(next)], phase(next));
        const int next_key = tile_key(j, buf(next));
        issue_scores(buf(next));
        mbar_wait(&v_full[buf(it)], phase(it));
        issue_values(buf(it), either<!decltype(odd)::value>(pa_even, pa_odd));
        wgmma_wait<1>();  // the scores; P V may still run
        fence_operands(sf);
        release(&k_empty[buf(next)]);
        if (j == tiles - 1) release_q();
        const bool moved = softmax_tile(next_key, corr, either<decltype(odd)::value>(pa_even, pa_odd));
        wgmma_wait<0>();
        fence_operands(o);
        release(&v_empty[buf(it)]);
        if (moved) rescale(corr);
        it = next;
      };
      for (int j = 1; j < tiles; ++j) {
        if (j & 1) step(j, std::true_type());
        else step(j, std::false_type());
      }
      mbar_wait(&v_full[buf(it)], phase(it));
      if ((tiles - 1) & 1) issue_values(buf(it), pa_odd);
      else issue_values(buf(it), pa_even);
      wgmma_wait<0>();
      fence_operands(o);
      release(&v_empty[buf(it)]);
      ++it;
    }
    if constexpr (Layout::kStagedOutput) {
      // The item's coordinates again from its index: kept through the tiles, they made
      // the pipelined mask kernel spill more.
      int out_qb, out_h, out_b;
      item_coords(__shfl_sync(0xffffffffu, i, 0), out_qb, out_h, out_b);
      stage_output(row_sum, out_qb * kBlockM, out_h, out_b);
    } else
      store_output<1, kD>(acc, row_sum, p.o + static_cast<int64_t>(b) * p.tq * p.heads * kD + h * kD,
                          static_cast<int64_t>(p.heads) * kD, row0, p.tq);
  }
  // The CTA's shared memory must outlive its last stores.
  if (Layout::kStagedOutput && store_issuer) bulk_wait_complete();
#else
  __trap();  // built for sm_90a only; sm90_available() keeps other GPUs away
#endif
}

// A tensor map over a [batch][tokens][heads][kD] bf16 tensor, boxes of 64 columns x
// `rows` tokens of one head, in the 128-byte swizzle the wgmma descriptors read.
template <int kD>
CUtensorMap head_tensor_map(const __nv_bfloat16* base, int batch, int tokens, int heads, int rows) {
  using Encode = PFN_cuTensorMapEncodeTiled_v12000;
  static const Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    SUBQ_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
#else
    SUBQ_CUDA_CHECK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &found));
#endif
    if (found != cudaDriverEntryPointSuccess || fn == nullptr)
      throw Error("flash_attention: the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<Encode>(fn);
  }();
  CUtensorMap map;
  const cuuint64_t dims[4] = {kD, static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(tokens),
                              static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {kD * 2, static_cast<cuuint64_t>(heads) * kD * 2,
                                 static_cast<cuuint64_t>(tokens) * heads * kD * 2};
  const cuuint32_t box[4] = {64, 1, static_cast<cuuint32_t>(rows), 1};
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<__nv_bfloat16*>(base), dims,
                            strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) throw Error("flash_attention: cuTensorMapEncodeTiled failed (" + std::to_string(r) + ")");
  return map;
}

// The kernels' item counters: two ints, zero between launches (each launch's last CTA
// zeroes them), shared by every launch on subq's one stream.
int* schedule_counters() {
  static int* counters = [] {
    void* c = device_alloc(2 * sizeof(int));
    SUBQ_CUDA_CHECK(cudaMemset(c, 0, 2 * sizeof(int)));
    return static_cast<int*>(c);
  }();
  return counters;
}

// kNeighborhood: whether the kernel's edge tiles handle a neighborhood rule (a kernel
// built without it keeps its registers for pipelining).
template <int D, Keys kKeys, int kBlockN, bool kPipelined, int kConsumers, int kStages, bool kNeighborhood = true>
void launch(const Params& p, int batch) {
  using Layout = SharedLayout<D, kBlockN, kConsumers, kStages>;
  constexpr int kBlockM = Layout::kBlockM, kSmem = Layout::kBytes;
  const auto kernel = flash_forward_sm90_kernel<D, kKeys, kBlockN, kPipelined, kConsumers, kStages, kNeighborhood>;
  static const bool configured = [&] {
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    return true;
  }();
  (void)configured;
  const TensorMaps maps{head_tensor_map<D>(p.q, batch, p.tq, p.heads, kBlockM),
                        head_tensor_map<D>(p.k, batch, p.tk, p.kv_heads, kBlockN),
                        head_tensor_map<D>(p.v, batch, p.tk, p.kv_heads, kBlockN),
                        head_tensor_map<D>(p.o, batch, p.tq, p.heads, 64)};
  const int64_t items = static_cast<int64_t>((p.tq + kBlockM - 1) / kBlockM) * p.heads * batch;
  if (items > INT_MAX - 1024)
    throw Error("flash_attention: " + std::to_string(items) + " query blocks exceed the sm_90 kernel's 32-bit count");
  const int grid =
      static_cast<int>(std::min<int64_t>(items, int64_t{device_info().multiprocessors} * (3 - kConsumers)));
  kernel<<<grid, 128 * (kConsumers + 1), kSmem, stream()>>>(p, maps, batch, schedule_counters());
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
  // Measured on an H200 (bench/cuda attention and sparse): dense rows of head dim 128 run
  // fastest pipelined, head dim 64 one tile at a time (415 against 365 TFLOP/s); head dim
  // 256 runs 64-key tiles one at a time, so that the 128 accumulator registers of each
  // thread's P V and the shared memory (Q 64 KiB, two stages of K and V 128 KiB) fit.
  // Masks of 128-query blocks run 128-key tiles (at 32K 1.09x 64-key tiles on a 2048-key
  // window, 1.14x on random blocks). For head dim 128 they are pipelined, through two
  // stages beside the staged output, in a kernel built without the neighborhood rule:
  // that rule's edge code spilled the pipelined kernel's registers (100 bytes), which
  // left it 0.88-0.94x one tile at a time; without it, H100: windows 1.10-1.18x, random
  // blocks 1.03-1.12x, every causal block listed 1.09-1.12x. Neighborhood masks run one
  // tile at a time, as do head dim 64's masks (three stages). CTAs of one math warpgroup
  // per 64-query half of a row measured 0.96-1.12x one tile at a time; switching the two
  // math warpgroups' turns at the tensor cores, as FlashAttention-3 does, gained nothing
  // on dense rows and lost on masks. Masks of 64-query blocks run one math warpgroup per CTA, two CTAs per
  // SM (1.6x the sm_80 kernel on top-8 rows, 1.7-1.8x its paired rows on a window), their
  // 64-key tiles pipelined (1.07-1.08x one at a time; a third stage leaves room for one
  // CTA per SM: 0.6x).
  if (keys == Keys::all || keys == Keys::causal) {
    const auto dense = [&](auto kind) {
      constexpr Keys kKind = decltype(kind)::value;
      if constexpr (D == 64) launch<D, kKind, 128, false, 2, 2>(p, batch);
      else if constexpr (D == 128) launch<D, kKind, 128, true, 2, 2>(p, batch);
      else launch<D, kKind, 64, false, 2, 2>(p, batch);
    };
    if (keys == Keys::all) dense(std::integral_constant<Keys, Keys::all>());
    else dense(std::integral_constant<Keys, Keys::causal>());
    return;
  }
  if (keys != Keys::listed || D == 256)
    throw Error("flash_attention: the sm_90 kernel runs masks of head dims 64 and 128, one row per CTA");
  if constexpr (D <= 128) {
    if (q_block == 64) {
      p.sub_tiles = k_block / 64;
      return launch<D, Keys::listed, 64, true, 1, 2>(p, batch);
    }
    if (k_block % 128 == 0) {
      p.sub_tiles = k_block / 128;
      if constexpr (D == 128) {
        if (!p.rule.neighborhood) return launch<D, Keys::listed, 128, true, 2, 2, false>(p, batch);
        return launch<D, Keys::listed, 128, false, 2, 2>(p, batch);
      } else {
        return launch<D, Keys::listed, 128, false, 2, 3>(p, batch);
      }
    }
    p.sub_tiles = k_block / 64;
    launch<D, Keys::listed, 64, false, 2, 4>(p, batch);
  }
}

}  // namespace

void sm90_forward(Params p, int batch, int head_dim, Keys keys, int q_block, int k_block) {
  if (head_dim == 64) forward<64>(p, batch, keys, q_block, k_block);
  else if (head_dim == 128) forward<128>(p, batch, keys, q_block, k_block);
  else if (head_dim == 256) forward<256>(p, batch, keys, q_block, k_block);
  else
    throw Error("flash_attention: the sm_90 kernel runs head dims 64, 128 and 256, found " + std::to_string(head_dim));
}

}  // namespace subq::cuda::flash
