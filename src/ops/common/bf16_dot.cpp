// AVX512-BF16 packing and the register tile (bf16_dot.h): an 8-row by 48-column tile
// (24 accumulators, 3 panel vectors and 1 broadcast of the 32 vector registers) runs over
// a block of k pairs, broadcasting each row's pair of A.
#include "src/ops/common/bf16_dot.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SUBQ_BF16_DOT_COMPILED 1
#endif

namespace subq::ops::bf16_dot {
namespace {

constexpr int64_t kMR = 8, kNV = kPanel / 16;

uint32_t pair(const bf16* lo, const bf16* hi) {
  uint16_t a = 0, b = 0;
  std::memcpy(&a, lo, 2);
  if (hi) std::memcpy(&b, hi, 2);
  return static_cast<uint32_t>(a) | static_cast<uint32_t>(b) << 16;
}

#ifdef SUBQ_BF16_DOT_COMPILED
// c[0, MR) x [0, cols) (+)= pairs [0, kc) of rows a (lda pairs apart) times one panel.
template <int MR>
__attribute__((target("avx512f,avx512bf16"))) void tile(const uint32_t* a, int64_t lda, const uint32_t* panel,
                                                        int64_t kc, float* c, int64_t ldc, int64_t cols, bool load_c) {
  __m512 acc[MR][kNV];
  __mmask16 mask[kNV];
  for (int v = 0; v < kNV; ++v) {
    const int64_t left = std::clamp<int64_t>(cols - 16 * v, 0, 16);
    mask[v] = static_cast<__mmask16>(left == 16 ? 0xFFFFu : (1u << left) - 1);
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v)
      acc[r][v] = load_c ? _mm512_maskz_loadu_ps(mask[v], c + r * ldc + 16 * v) : _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    __m512bh b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(panel + p * kPanel + 16 * v);
    for (int r = 0; r < MR; ++r) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * lda + p]));
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, b[v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mask[v], acc[r][v]);
}

void run_tile(int64_t rows, const uint32_t* a, int64_t lda, const uint32_t* panel, int64_t kc, float* c, int64_t ldc,
              int64_t cols, bool load_c) {
  switch (rows) {
    case 8: tile<8>(a, lda, panel, kc, c, ldc, cols, load_c); return;
    case 7: tile<7>(a, lda, panel, kc, c, ldc, cols, load_c); return;
    case 6: tile<6>(a, lda, panel, kc, c, ldc, cols, load_c); return;
    case 5: tile<5>(a, lda, panel, kc, c, ldc, cols, load_c); return;
    case 4: tile<4>(a, lda, panel, kc, c, ldc, cols, load_c); return;
    case 3: tile<3>(a, lda, panel, kc, c, ldc, cols, load_c); return;
    case 2: tile<2>(a, lda, panel, kc, c, ldc, cols, load_c); return;
    default: tile<1>(a, lda, panel, kc, c, ldc, cols, load_c); return;
  }
}
#endif

}  // namespace

bool available() {
#ifdef SUBQ_BF16_DOT_COMPILED
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

void pack_rows(const bf16* src, int64_t ld, int64_t cols, int64_t K, int64_t kp0, int64_t kc, uint32_t* out) {
  const int64_t panels = (cols + kPanel - 1) / kPanel;
  std::fill_n(out, panels * kc * kPanel, 0u);
  for (int64_t n = 0; n < cols; ++n) {
    const bf16* row = src + n * ld;
    uint32_t* col = out + (n / kPanel) * kc * kPanel + n % kPanel;
    for (int64_t p = 0; p < kc; ++p) {
      const int64_t k = 2 * (kp0 + p);
      if (k >= K) break;
      col[p * kPanel] = pair(row + k, k + 1 < K ? row + k + 1 : nullptr);
    }
  }
}

void pack_pairs(const bf16* src, int64_t ld, int64_t K, int64_t N, int64_t kc, uint32_t* out) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  std::fill_n(out, panels * kc * kPanel, 0u);
  for (int64_t p = 0; p < kc && 2 * p < K; ++p) {
    const bf16* lo = src + 2 * p * ld;
    const bf16* hi = 2 * p + 1 < K ? lo + ld : nullptr;
    for (int64_t n = 0; n < N; ++n)
      out[((n / kPanel) * kc + p) * kPanel + n % kPanel] = pair(lo + n, hi ? hi + n : nullptr);
  }
}

void product(const uint32_t* a, int64_t lda, const uint32_t* packed, int64_t kc, float* c, int64_t ldc, int64_t rows,
             int64_t cols, bool accumulate) {
#ifdef SUBQ_BF16_DOT_COMPILED
  for (int64_t j = 0; j < cols; j += kPanel)
    for (int64_t m = 0; m < rows; m += kMR)
      run_tile(std::min(kMR, rows - m), a + m * lda, lda, packed + (j / kPanel) * kc * kPanel, kc, c + m * ldc + j,
               ldc, std::min(kPanel, cols - j), accumulate);
#else
  (void)a, (void)lda, (void)packed, (void)kc, (void)c, (void)ldc, (void)rows, (void)cols, (void)accumulate;
  throw Error("bf16_dot::product: AVX512-BF16 kernels are not compiled for this machine");
#endif
}

}  // namespace subq::ops::bf16_dot
