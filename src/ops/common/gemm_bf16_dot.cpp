// y (+)= bf16(x) · W^T for bf16 W with AVX512-BF16 dot products (VDPBF16PS: AMD Zen 4
// and later, Intel Cooper Lake), the kernel behind MatmulPrecision::bf16 where AMX is
// absent. One instruction multiplies 16 pairs of bf16 (k, k+1) and adds both products to
// 16 f32 sums: twice the products of an f32 FMA. x is rounded to bf16 once per call (as
// on AMX); products are exact, sums f32.
// W is packed per (part, block of kNC columns, block of kKC k-pairs) into panels of kNR
// columns, panel[kp][n] = the pair (W[n][2 kp], W[n][2 kp + 1]) as one 32-bit word; a
// register tile of kMR rows x kNR columns accumulates over the block, broadcasting pairs
// of x straight from its rounded rows.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/common/convert.h"
#include "src/ops/common/gemm_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SUBQ_BF16_DOT_COMPILED 1
#endif

namespace subq::ops {

#ifdef SUBQ_BF16_DOT_COMPILED
namespace {

// 8 x 3 accumulators + 3 panel vectors + 1 broadcast of the 32 vector registers.
constexpr int64_t kMR = 8, kNV = 3, kNR = 16 * kNV;
// A panel block (kKC pairs x kNR columns, 48 KiB) is reused from L1/L2 by every row tile
// of the part; the rows' kKC pairs (1 KiB each) come from L2.
constexpr int64_t kKC = 256;
constexpr int64_t kNC = 16 * kNR;
// Row tiles a part keeps at least, so that packing its columns of W is amortised.
constexpr int64_t kMinPartRowTiles = 4;
struct RoundedRows;
struct PackedPanels;

// Columns [n0, n0 + nb) x pairs [kp0, kp0 + kc) of W into panels of kNR columns (zeros
// past nb and past K).
void pack_panels(const bf16* w, int64_t ldw, int64_t K, int64_t n0, int64_t nb, int64_t kp0, int64_t kc,
                 uint32_t* out) {
  const int64_t panels = (nb + kNR - 1) / kNR;
  std::fill_n(out, panels * kc * kNR, 0u);
  for (int64_t n = 0; n < nb; ++n) {
    const bf16* row = w + (n0 + n) * ldw;
    uint32_t* col = out + (n / kNR) * kc * kNR + n % kNR;
    for (int64_t p = 0; p < kc; ++p) {
      const int64_t k = 2 * (kp0 + p);
      if (k >= K) break;
      uint16_t lo, hi = 0;
      std::memcpy(&lo, row + k, 2);
      if (k + 1 < K) std::memcpy(&hi, row + k + 1, 2);
      col[p * kNR] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
    }
  }
}

// y[0, MR) x [0, cols) (+)= pairs [0, kc) of rows a (stride lda pairs) times the panel.
template <int MR>
__attribute__((target("avx512f,avx512bf16"))) void tile(const uint32_t* a, int64_t lda, const uint32_t* panel,
                                                        int64_t kc, float* y, int64_t ldy, int64_t cols, bool load_y) {
  __m512 acc[MR][kNV];
  const __mmask16 full = 0xFFFF;
  __mmask16 mask[kNV];
  for (int v = 0; v < kNV; ++v) {
    const int64_t left = std::clamp<int64_t>(cols - 16 * v, 0, 16);
    mask[v] = static_cast<__mmask16>(left == 16 ? full : (1u << left) - 1);
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v)
      acc[r][v] = load_y ? _mm512_maskz_loadu_ps(mask[v], y + r * ldy + 16 * v) : _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    __m512bh b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(panel + p * kNR + 16 * v);
    for (int r = 0; r < MR; ++r) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * lda + p]));
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, b[v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < kNV; ++v) _mm512_mask_storeu_ps(y + r * ldy + 16 * v, mask[v], acc[r][v]);
}

void run_tile(int64_t rows, const uint32_t* a, int64_t lda, const uint32_t* panel, int64_t kc, float* y, int64_t ldy,
              int64_t cols, bool load_y) {
  switch (rows) {
    case 8: tile<8>(a, lda, panel, kc, y, ldy, cols, load_y); return;
    case 7: tile<7>(a, lda, panel, kc, y, ldy, cols, load_y); return;
    case 6: tile<6>(a, lda, panel, kc, y, ldy, cols, load_y); return;
    case 5: tile<5>(a, lda, panel, kc, y, ldy, cols, load_y); return;
    case 4: tile<4>(a, lda, panel, kc, y, ldy, cols, load_y); return;
    case 3: tile<3>(a, lda, panel, kc, y, ldy, cols, load_y); return;
    case 2: tile<2>(a, lda, panel, kc, y, ldy, cols, load_y); return;
    default: tile<1>(a, lda, panel, kc, y, ldy, cols, load_y); return;
  }
}

}  // namespace

bool bf16_dot_available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return ok;
}

void gemm_bf16_dot_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const bf16* w, int64_t ldw,
                       float* y, int64_t ldy, bool accumulate) {
  if (!bf16_dot_available()) throw Error("gemm_bf16_dot_xwt: this CPU has no AVX512-BF16");
  const int64_t pairs = (K + 1) / 2;
  const Scratch<RoundedRows, bf16> rounded(static_cast<size_t>(M * 2 * pairs));
  parallel_for(M, 8, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      bf16* row = rounded.data() + m * 2 * pairs;
      f32_to_bf16(x + m * ldx, row, static_cast<size_t>(K));
      if (K % 2) row[K] = bf16{};
    }
  });
  const auto* a = reinterpret_cast<const uint32_t*>(rounded.data());

  const GemmParts parts(M, N, kNR, kMR, kMinPartRowTiles, num_threads());
  parallel_for_each(parts.count(), [&](int64_t part) {
    int64_t c0, c1, r0, r1;
    parts.range(part, c0, c1, r0, r1);
    if (c0 >= c1 || r0 >= r1) return;
    const Scratch<PackedPanels, uint32_t> pack(static_cast<size_t>(kKC * kNC));
    for (int64_t n0 = c0; n0 < c1; n0 += kNC) {
      const int64_t nb = std::min(kNC, c1 - n0);
      for (int64_t kp0 = 0; kp0 < pairs; kp0 += kKC) {
        const int64_t kc = std::min(kKC, pairs - kp0);
        pack_panels(w, ldw, K, n0, nb, kp0, kc, pack.data());
        for (int64_t j = 0; j < nb; j += kNR)
          for (int64_t m = r0; m < r1; m += kMR)
            run_tile(std::min(kMR, r1 - m), a + m * pairs + kp0, pairs, pack.data() + (j / kNR) * kc * kNR, kc,
                     y + m * ldy + n0 + j, ldy, std::min(kNR, nb - j), accumulate || kp0 > 0);
      }
    }
  });
}

#else

bool bf16_dot_available() { return false; }

void gemm_bf16_dot_xwt(int64_t, int64_t, int64_t, const float*, int64_t, const bf16*, int64_t, float*, int64_t,
                       bool) {
  throw Error("gemm_bf16_dot_xwt: AVX512-BF16 kernels are not compiled for this machine");
}

#endif

}  // namespace subq::ops
