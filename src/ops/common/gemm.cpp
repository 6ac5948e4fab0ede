// y = x · W^T: the streaming GEMV kernel for few rows of x (decode), the packed GEMM for
// more, where reusing each packed weight panel across rows of x pays for packing it.
#include "src/ops/common/gemm.h"

#include <algorithm>
#include <atomic>

#include "src/ops/common/gemm_kernels.h"
#include "subq/ops.h"

namespace subq::ops {

// Largest M that takes the GEMV path. Measured on Zen 5 (2 threads, N=14336 K=4096 bf16
// and N=K=4096 f32): GEMV is faster up to M=32, the packed GEMM from M=64 (its packing of
// W costs about as much as streaming W through GEMV once per 4 rows of x); see
// docs/benchmarks.md.
constexpr int64_t kMaxGemvRows = 32;

namespace {
std::atomic<MatmulPrecision> g_precision{MatmulPrecision::exact};
}  // namespace

void gemm_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w, DType wdt,
              int64_t ldw, float* y, int64_t ldy, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill_n(y + m * ldy, N, 0.f);
    return;
  }
  if (M <= kMaxGemvRows)
    gemv_xwt(M, N, K, x, ldx, w, wdt, ldw, y, ldy, accumulate);
  else if (wdt == DType::bf16 && matmul_precision() == MatmulPrecision::bf16 && amx_available())
    gemm_amx_bf16_xwt(M, N, K, x, ldx, static_cast<const bf16*>(w), ldw, y, ldy, accumulate);
  else if (wdt == DType::bf16 && matmul_precision() == MatmulPrecision::bf16 && bf16_dot_available())
    gemm_bf16_dot_xwt(M, N, K, x, ldx, static_cast<const bf16*>(w), ldw, y, ldy, accumulate);
  else
    gemm_packed_xwt(M, N, K, x, ldx, w, wdt, ldw, y, ldy, accumulate);
}

void gemm_xwt_group(int64_t M, int64_t K, const float* x, int64_t ldx, DType wdt,
                    std::span<const WeightOutput> outputs) {
  if (M > 0 && K > 0 && M <= kMaxGemvRows) return gemv_xwt_group(M, K, x, ldx, wdt, outputs, false);
  for (const WeightOutput& o : outputs) gemm_xwt(M, o.n, K, x, ldx, o.w, wdt, o.ldw, o.y, o.ldy, false);
}

}  // namespace subq::ops

namespace subq {

void set_matmul_precision(MatmulPrecision precision) { ops::g_precision.store(precision); }
MatmulPrecision matmul_precision() { return ops::g_precision.load(); }
bool bf16_matmul_available() { return ops::amx_available() || ops::bf16_dot_available(); }

}  // namespace subq
