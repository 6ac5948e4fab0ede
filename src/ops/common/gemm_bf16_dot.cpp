// y (+)= bf16(x) · W^T for bf16 W with AVX512-BF16 dot products (bf16_dot.h), the kernel
// behind MatmulPrecision::bf16 where AMX is absent (AMD Zen 4 and later). x is rounded to
// bf16 once per call (as on AMX); products are exact, sums f32. W is packed per (part,
// block of kNC columns, block of kKC k pairs) into panels, and every row of the part runs
// over each panel block while it sits in L1/L2.
#include <algorithm>
#include <cstdint>

#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/common/bf16_dot.h"
#include "src/ops/common/convert.h"
#include "src/ops/common/gemm_kernels.h"

namespace subq::ops {

namespace {
using bf16_dot::kPanel;
// A panel's kKC pairs (48 KiB) are reused by every 8-row tile of the part; a row's kKC
// pairs (1 KiB) come from L2.
constexpr int64_t kKC = 256;
constexpr int64_t kNC = 16 * kPanel;
constexpr int64_t kRowTile = 8;
// Row tiles a part keeps at least, so that packing its columns of W is amortised.
constexpr int64_t kMinPartRowTiles = 4;
struct RoundedRows;
struct PackedPanels;
}  // namespace

bool bf16_dot_available() { return bf16_dot::available(); }

void gemm_bf16_dot_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const bf16* w, int64_t ldw,
                       float* y, int64_t ldy, bool accumulate) {
  if (!bf16_dot::available()) throw Error("gemm_bf16_dot_xwt: this CPU has no AVX512-BF16");
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
  const GemmParts parts(M, N, kPanel, kRowTile, kMinPartRowTiles, num_threads());
  parallel_for_each(parts.count(), [&](int64_t part) {
    int64_t c0, c1, r0, r1;
    parts.range(part, c0, c1, r0, r1);
    if (c0 >= c1 || r0 >= r1) return;
    const Scratch<PackedPanels, uint32_t> pack(static_cast<size_t>(kKC * kNC));
    for (int64_t n0 = c0; n0 < c1; n0 += kNC) {
      const int64_t nb = std::min(kNC, c1 - n0);
      for (int64_t kp0 = 0; kp0 < pairs; kp0 += kKC) {
        const int64_t kc = std::min(kKC, pairs - kp0);
        bf16_dot::pack_rows(w + n0 * ldw, ldw, nb, K, kp0, kc, pack.data());
        bf16_dot::product(a + r0 * pairs + kp0, pairs, pack.data(), kc, y + r0 * ldy + n0, ldy, r1 - r0, nb,
                          accumulate || kp0 > 0);
      }
    }
  });
}

}  // namespace subq::ops
