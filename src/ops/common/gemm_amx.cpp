// y (+)= bf16(x) · W^T for bf16 W on Intel AMX tiles (Sapphire Rapids and later), the
// kernel behind MatmulPrecision::bf16. x is rounded to bf16 once per call (as PyTorch
// and llama.cpp do for bf16 weights); products are exact and accumulate in f32 tiles.
//
// Layout: TDPBF16PS multiplies a 16 x 32 bf16 A tile (16 rows of x, 32 k) by a B tile of
// 16 k-pairs x 16 columns, each element the pair (W[n][k], W[n][k+1]) ("VNNI" order),
// into a 16 x 16 f32 C tile. W is packed per thread into such B tiles for a block of
// kNB columns and all of K; each 32 x 32 block of y is then 2 x 2 C tiles over K, with
// A read straight from the rounded copy of x (padded with zero rows and columns, so no
// tile load ever reads past it).
#include "src/ops/common/gemm_kernels.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "src/core/parallel.h"
#include "src/ops/common/convert.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define SUBQ_AMX_COMPILED 1
#endif

namespace subq::ops {

#ifdef SUBQ_AMX_COMPILED
namespace {

constexpr int64_t kTile = 16;      // rows of A / C, columns of B / C, k-pairs of B
constexpr int64_t kTileK = 32;     // bf16 k per A row / B tile
constexpr int64_t kNB = 128;       // columns of W per packed block (K x kNB bf16 in L2)
constexpr int64_t kPackedTile = kTile * kTileK;  // bf16 elements of one B tile

// Linux grants AMX tile data to a process only on request (the tile state is 8 KiB).
bool request_amx() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;
  if (!tile || !bf16) return false;
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C (2 x 2 of 16 x 16 f32); 4-5: A (16 x 32 bf16); 6-7: B (16 x 16 pairs).
constexpr TileConfig make_tile_config() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kTile;
    cfg.colsb[t] = 64;
  }
  return cfg;
}
// A constant in memory: GCC 12 drops the stores to a local config as dead, not seeing
// that ldtilecfg reads it.
constexpr TileConfig kTileConfig = make_tile_config();

__attribute__((target("amx-tile"))) void configure_tiles() { _tile_loadconfig(&kTileConfig); }

__attribute__((target("amx-tile"))) void release_tiles() { _tile_release(); }

// tile[kk][n] = words[n][kk] for a 16 x 16 block of 32-bit words (rows 64 bytes apart):
// pairs of rows interleaved by words, then by 64-bit halves, then 128-bit lanes gathered
// across four registers; u[j] ends holding words j, j+4, j+8, j+12 of rows 4i..4i+3 in
// its lanes.
// GCC 12 warns about a variable of its own avx512fintrin.h here (its undefined-value
// placeholder, which the unmasked intrinsics never read; GCC 13 does not warn).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
__attribute__((target("avx512f"))) void transpose_words_16x16(const uint32_t* words, uint32_t* tile) {
  __m512i r[16], t[16], u[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(words + 16 * i);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88), v1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xdd);
    const __m512i w0 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88);
    const __m512i w1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xdd);
    _mm512_storeu_si512(tile + 16 * j, _mm512_shuffle_i32x4(v0, w0, 0x88));
    _mm512_storeu_si512(tile + 16 * (j + 8), _mm512_shuffle_i32x4(v0, w0, 0xdd));
    _mm512_storeu_si512(tile + 16 * (j + 4), _mm512_shuffle_i32x4(v1, w1, 0x88));
    _mm512_storeu_si512(tile + 16 * (j + 12), _mm512_shuffle_i32x4(v1, w1, 0xdd));
  }
}
#pragma GCC diagnostic pop

// W rows [n0, n0 + nb) into B tiles: tile (g, kb) holds, at [kk][n], the bf16 pair
// W[n0 + 16 g + n][32 kb + 2 kk + {0, 1}] as one 32-bit word, i.e. a 16 x 16 transpose
// of words; zero past N and past K.
void pack_b(const bf16* w, int64_t ldw, int64_t N, int64_t K, int64_t n0, int64_t nb, int64_t k_blocks, bf16* pack) {
  // Whole 32-column pairs of groups: block_32x32 reads both groups of a pair.
  const int64_t groups = (nb + 2 * kTile - 1) / (2 * kTile) * 2;
  auto* out = reinterpret_cast<uint32_t*>(pack);
  alignas(64) uint32_t words[kTile * kTile];
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      const int64_t k0 = kb * kTileK, kn = std::min(kTileK, K - k0);
      for (int64_t n = 0; n < kTile; ++n) {
        const int64_t row = n0 + g * kTile + n;
        auto* dst = reinterpret_cast<bf16*>(words + n * kTile);
        const int64_t valid = row < N && row < n0 + nb ? kn : 0;
        if (valid > 0) std::memcpy(dst, w + row * ldw + k0, static_cast<size_t>(valid) * sizeof(bf16));
        std::fill(dst + valid, dst + kTileK, bf16{});
      }
      transpose_words_16x16(words, out + (g * k_blocks + kb) * kTile * kTile);
    }
}

// A 32 x 32 block of y at (m, n): 2 x 2 C tiles over all k blocks. `a` is the rounded x
// at row m (row stride lda elements), `b0`/`b1` the packed column groups n and n + 16.
// Full blocks load and store C in y itself; edge blocks go through `edge` [32][32].
__attribute__((target("amx-tile,amx-bf16"))) void block_32x32(const bf16* a, int64_t lda, const bf16* b0,
                                                               const bf16* b1, int64_t k_blocks, float* y,
                                                               int64_t ldy, int64_t rows, int64_t cols,
                                                               bool accumulate, float* edge) {
  const bool full = rows == 2 * kTile && cols == 2 * kTile;
  const size_t a_stride = static_cast<size_t>(lda) * sizeof(bf16);
  const size_t y_stride = static_cast<size_t>(ldy) * sizeof(float);
  if (full && accumulate) {
    _tile_loadd(0, y, y_stride);
    _tile_loadd(1, y + kTile, y_stride);
    _tile_loadd(2, y + kTile * ldy, y_stride);
    _tile_loadd(3, y + kTile * ldy + kTile, y_stride);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t kb = 0; kb < k_blocks; ++kb) {
    _tile_loadd(4, a + kb * kTileK, a_stride);
    _tile_loadd(5, a + kTile * lda + kb * kTileK, a_stride);
    _tile_loadd(6, b0 + kb * kPackedTile, 64);
    _tile_loadd(7, b1 + kb * kPackedTile, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  if (full) {
    _tile_stored(0, y, y_stride);
    _tile_stored(1, y + kTile, y_stride);
    _tile_stored(2, y + kTile * ldy, y_stride);
    _tile_stored(3, y + kTile * ldy + kTile, y_stride);
    return;
  }
  constexpr size_t kEdgeStride = 2 * kTile * sizeof(float);
  _tile_stored(0, edge, kEdgeStride);
  _tile_stored(1, edge + kTile, kEdgeStride);
  _tile_stored(2, edge + kTile * 2 * kTile, kEdgeStride);
  _tile_stored(3, edge + kTile * 2 * kTile + kTile, kEdgeStride);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const float v = edge[i * 2 * kTile + j];
      y[i * ldy + j] = accumulate ? y[i * ldy + j] + v : v;
    }
}

}  // namespace

bool amx_available() {
  static const bool ok = request_amx();
  return ok;
}

void gemm_amx_bf16_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const bf16* w, int64_t ldw,
                       float* y, int64_t ldy, bool accumulate) {
  // Without the OS's grant the first tile instruction would raise SIGILL.
  if (!amx_available()) throw Error("gemm_amx_bf16_xwt: AMX-BF16 is not available to this process");
  const int64_t k_blocks = (K + kTileK - 1) / kTileK, lda = k_blocks * kTileK;
  const int64_t m_pad = (M + 2 * kTile - 1) / (2 * kTile) * (2 * kTile);
  std::vector<bf16> a(static_cast<size_t>(m_pad * lda));
  parallel_for(m_pad, 8, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      bf16* row = a.data() + m * lda;
      const int64_t n = m < M ? K : 0;
      if (n > 0) f32_to_bf16(x + m * ldx, row, static_cast<size_t>(n));
      std::fill(row + n, row + lda, bf16{});
    }
  });

  // Threads own disjoint column ranges (whole 32-column blocks), each packing its share of W.
  const int64_t col_blocks = (N + 2 * kTile - 1) / (2 * kTile);
  const int64_t parts = std::min<int64_t>(col_blocks, 4 * num_threads());
  parallel_for_each(parts, [&](int64_t part) {
    const int64_t c0 = col_blocks * part / parts * 2 * kTile;
    const int64_t c1 = std::min(N, col_blocks * (part + 1) / parts * 2 * kTile);
    if (c0 >= c1) return;
    std::vector<bf16> pack(static_cast<size_t>((kNB / kTile) * k_blocks * kPackedTile));
    alignas(64) float edge[4 * kTile * kTile];
    configure_tiles();
    for (int64_t n0 = c0; n0 < c1; n0 += kNB) {
      const int64_t nb = std::min(kNB, c1 - n0);
      pack_b(w, ldw, N, K, n0, nb, k_blocks, pack.data());
      for (int64_t m = 0; m < M; m += 2 * kTile)
        for (int64_t j = 0; j < nb; j += 2 * kTile) {
          const bf16* b0 = pack.data() + (j / kTile) * k_blocks * kPackedTile;
          block_32x32(a.data() + m * lda, lda, b0, b0 + k_blocks * kPackedTile, k_blocks, y + m * ldy + n0 + j, ldy,
                      std::min(2 * kTile, M - m), std::min(2 * kTile, nb - j), accumulate, edge);
        }
    }
    release_tiles();
  });
}

#else

bool amx_available() { return false; }

void gemm_amx_bf16_xwt(int64_t, int64_t, int64_t, const float*, int64_t, const bf16*, int64_t, float*, int64_t,
                       bool) {
  throw Error("gemm_amx_bf16_xwt: AMX is not compiled in on this architecture");
}

#endif

}  // namespace subq::ops
