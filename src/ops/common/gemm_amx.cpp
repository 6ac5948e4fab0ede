// y (+)= bf16(x) · W^T for bf16 W on Intel AMX tiles (Sapphire Rapids and later), the
// kernel behind MatmulPrecision::bf16. x is rounded to bf16 once per call (as PyTorch
// and llama.cpp do for bf16 weights); products are exact and accumulate in f32 tiles.
// W is packed per thread into B tiles (amx.h) for a block of kNB columns and all of K;
// each 32 x 32 block of y is then 2 x 2 C tiles over K, with A read straight from the
// rounded copy of x (padded with zero rows and columns, so no tile load reads past it).
#include <algorithm>
#include <cstdint>

#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/common/amx.h"
#include "src/ops/common/convert.h"
#include "src/ops/common/gemm_kernels.h"

namespace subq::ops {

namespace {
constexpr int64_t kNB = 128;  // columns of W per packed block (K x kNB bf16 stay in L2)
// Row blocks (of 32) a part keeps at least, so that packing its columns of W is amortised.
constexpr int64_t kMinPartRowBlocks = 4;
struct RoundedRows;
struct PackedColumns;
}  // namespace

bool amx_available() { return amx::available(); }

void gemm_amx_bf16_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const bf16* w, int64_t ldw,
                       float* y, int64_t ldy, bool accumulate) {
  using amx::kPackedTile;
  using amx::kTile;
  using amx::kTileK;
  // Without the OS's grant the first tile instruction would raise SIGILL.
  if (!amx::available()) throw Error("gemm_amx_bf16_xwt: AMX-BF16 is not available to this process");
  const int64_t k_blocks = (K + kTileK - 1) / kTileK, lda = k_blocks * kTileK;
  const int64_t m_pad = (M + 2 * kTile - 1) / (2 * kTile) * (2 * kTile);
  const Scratch<RoundedRows, bf16> a(static_cast<size_t>(m_pad * lda));
  parallel_for(m_pad, 8, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      bf16* row = a.data() + m * lda;
      const int64_t n = m < M ? K : 0;
      if (n > 0) f32_to_bf16(x + m * ldx, row, static_cast<size_t>(n));
      std::fill(row + n, row + lda, bf16{});
    }
  });

  const GemmParts parts(M, N, 2 * kTile, 2 * kTile, kMinPartRowBlocks, num_threads());
  parallel_for_each(parts.count(), [&](int64_t part) {
    int64_t c0, c1, r0, r1;
    parts.range(part, c0, c1, r0, r1);
    if (c0 >= c1 || r0 >= r1) return;
    const Scratch<PackedColumns, bf16> pack(static_cast<size_t>((kNB / kTile) * k_blocks * kPackedTile));
    alignas(64) float edge[4 * kTile * kTile];
    amx::configure();
    for (int64_t n0 = c0; n0 < c1; n0 += kNB) {
      const int64_t nb = std::min(kNB, c1 - n0);
      // Whole pairs of column groups: each block reads two.
      const int64_t groups = (nb + 2 * kTile - 1) / (2 * kTile) * 2;
      amx::pack_rows(w + n0 * ldw, ldw, nb, K, groups, k_blocks, pack.data());
      for (int64_t m = r0; m < r1; m += 2 * kTile)
        for (int64_t j = 0; j < nb; j += 2 * kTile)
          amx::block_32x32(a.data() + m * lda, lda, pack.data() + (j / kTile) * k_blocks * kPackedTile, k_blocks,
                           y + m * ldy + n0 + j, ldy, std::min(2 * kTile, r1 - m), std::min(2 * kTile, nb - j),
                           accumulate, edge);
    }
    amx::release();
  });
}

}  // namespace subq::ops
