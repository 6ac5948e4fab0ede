// y = x · W^T. Simple row-dot implementation (to be replaced by packed micro-kernels).
#include "src/ops/common/gemm.h"

#include <vector>

#include "src/core/parallel.h"
#include "src/ops/common/convert.h"

namespace subq::ops {

void gemm_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w, DType wdt,
              int64_t ldw, float* y, int64_t ldy, bool accumulate) {
  const size_t es = dtype_size(wdt);
  parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t n = n0; n < n1; ++n) {
      to_f32(static_cast<const std::byte*>(w) + static_cast<size_t>(n * ldw) * es, wdt, row.data(),
             static_cast<size_t>(K));
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * ldx;
        float acc = 0.f;
        for (int64_t k = 0; k < K; ++k) acc += xr[k] * row[static_cast<size_t>(k)];
        float& out = y[m * ldy + n];
        out = accumulate ? out + acc : acc;
      }
    }
  });
}

}  // namespace subq::ops
