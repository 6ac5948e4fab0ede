// AMX tile configuration, operand packing and the 32 x 32 block product (amx.h). The
// tile instructions are outside Highway 1.0.3, so this file uses the compiler's
// intrinsics under per-function target attributes; callers check available() first.
#include "src/ops/common/amx.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define SUBQ_AMX_COMPILED 1
#endif

namespace subq::ops::amx {

#ifdef SUBQ_AMX_COMPILED
namespace {

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

// tile[kk][n] = words[n][kk] for a 16 x 16 block of 32-bit words (rows 64 bytes apart):
// pairs of rows interleaved by words, then by 64-bit halves, then 128-bit lanes gathered
// across four registers; u[j] ends holding words j, j+4, j+8, j+12 of rows 4i..4i+3 in
// its lanes.
// GCC 12 warns here about a variable inside its own avx512fintrin.h: the undefined
// pass-through value of each unmasked intrinsic, which is never read (GCC 13 does not).
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

}  // namespace

bool available() {
  static const bool ok = request_amx();
  return ok;
}

__attribute__((target("amx-tile"))) void configure() { _tile_loadconfig(&kTileConfig); }

__attribute__((target("amx-tile"))) void release() { _tile_release(); }

void pack_rows(const bf16* src, int64_t ld, int64_t rows, int64_t K, int64_t groups, int64_t k_blocks, bf16* out) {
  auto* tiles = reinterpret_cast<uint32_t*>(out);
  alignas(64) uint32_t words[kTile * kTile];
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      const int64_t k0 = kb * kTileK, kn = std::clamp<int64_t>(K - k0, 0, kTileK);
      for (int64_t n = 0; n < kTile; ++n) {
        const int64_t row = g * kTile + n;
        auto* dst = reinterpret_cast<bf16*>(words + n * kTile);
        const int64_t valid = row < rows ? kn : 0;
        if (valid > 0) std::memcpy(dst, src + row * ld + k0, static_cast<size_t>(valid) * sizeof(bf16));
        std::fill(dst + valid, dst + kTileK, bf16{});
      }
      transpose_words_16x16(words, tiles + (g * k_blocks + kb) * kTile * kTile);
    }
}

namespace {
// One B tile row from two full source rows: (a[n], b[n]) for n < 16. unpacklo/hi
// interleave within 128-bit lanes (pairs 0-3 | 8-11 and 4-7 | 12-15); the lane
// permutes put them in order.
__attribute__((target("avx2"))) void interleave_16(const bf16* a, const bf16* b, bf16* row) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a));
  const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
  const __m256i lo = _mm256_unpacklo_epi16(x, y), hi = _mm256_unpackhi_epi16(x, y);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(row), _mm256_permute2x128_si256(lo, hi, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + kTile), _mm256_permute2x128_si256(lo, hi, 0x31));
}
}  // namespace

void pack_pairs(const bf16* src, int64_t ld, int64_t K, int64_t N, int64_t groups, int64_t k_blocks, bf16* out) {
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      bf16* tile = out + (g * k_blocks + kb) * kPackedTile;
      const int64_t n0 = g * kTile, cols = std::clamp<int64_t>(N - n0, 0, kTile);
      for (int64_t kk = 0; kk < kTile; ++kk) {
        bf16* row = tile + kk * 2 * kTile;
        const int64_t k = kb * kTileK + 2 * kk;
        if (cols == kTile && k + 1 < K) {
          interleave_16(src + k * ld + n0, src + (k + 1) * ld + n0, row);
          continue;
        }
        std::fill(row, row + 2 * kTile, bf16{});
        for (int64_t e = 0; e < 2 && k + e < K; ++e) {
          const bf16* s = src + (k + e) * ld + n0;
          for (int64_t n = 0; n < cols; ++n) row[2 * n + e] = s[n];
        }
      }
    }
}

__attribute__((target("amx-tile,amx-bf16"))) void block_32x32(const bf16* a, int64_t lda, const bf16* b0,
                                                               int64_t k_blocks, float* c, int64_t ldc, int64_t rows,
                                                               int64_t cols, bool accumulate, float* edge) {
  const bf16* b1 = b0 + k_blocks * kPackedTile;
  const bool full = rows == 2 * kTile && cols == 2 * kTile;
  const size_t a_stride = static_cast<size_t>(lda) * sizeof(bf16);
  const size_t c_stride = static_cast<size_t>(ldc) * sizeof(float);
  if (full && accumulate) {
    _tile_loadd(0, c, c_stride);
    _tile_loadd(1, c + kTile, c_stride);
    _tile_loadd(2, c + kTile * ldc, c_stride);
    _tile_loadd(3, c + kTile * ldc + kTile, c_stride);
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
    _tile_stored(0, c, c_stride);
    _tile_stored(1, c + kTile, c_stride);
    _tile_stored(2, c + kTile * ldc, c_stride);
    _tile_stored(3, c + kTile * ldc + kTile, c_stride);
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
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + v : v;
    }
}

#else

bool available() { return false; }

namespace {
[[noreturn]] void not_compiled() { throw Error("AMX kernels are not compiled in on this architecture"); }
}  // namespace

void configure() { not_compiled(); }
void release() { not_compiled(); }
void pack_rows(const bf16*, int64_t, int64_t, int64_t, int64_t, int64_t, bf16*) { not_compiled(); }
void pack_pairs(const bf16*, int64_t, int64_t, int64_t, int64_t, int64_t, bf16*) { not_compiled(); }
void block_32x32(const bf16*, int64_t, const bf16*, int64_t, float*, int64_t, int64_t, int64_t, bool, float*) {
  not_compiled();
}

#endif

}  // namespace subq::ops::amx
