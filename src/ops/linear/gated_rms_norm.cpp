#include "src/ops/linear/gated_rms_norm.h"

#include <algorithm>
#include <cstddef>

#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/common/activations.h"
#include "src/ops/common/norm.h"

namespace subq::ops {

void gated_rms_norm_row(const float* x, const float* z, const float* weight, int64_t n, int64_t group, float eps,
                        GateOrder order, float* y, float* scratch) {
  const auto len = static_cast<size_t>(n);
  silu(z, scratch, len);
  if (order == GateOrder::gate_then_norm) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scratch[i];
    for (int64_t g = 0; g < n; g += group) rms_norm_row(y + g, weight + g, eps, y + g, static_cast<size_t>(group));
  } else {
    for (int64_t g = 0; g < n; g += group) rms_norm_row(x + g, weight + g, eps, y + g, static_cast<size_t>(group));
    for (int64_t i = 0; i < n; ++i) y[i] *= scratch[i];
  }
}

struct GateRow;

void gated_rms_norm_rows(float* y, const float* z, int64_t z_stride, const float* weight, int64_t rows, int64_t n,
                         int64_t group, float eps, GateOrder order) {
  parallel_for(rows, std::max<int64_t>(1, (int64_t{1} << 14) / n), [&](int64_t r0, int64_t r1) {
    const Scratch<GateRow, float> gate(static_cast<size_t>(n));
    for (int64_t r = r0; r < r1; ++r)
      gated_rms_norm_row(y + r * n, z + r * z_stride, weight, n, group, eps, order, y + r * n, gate.data());
  });
}

}  // namespace subq::ops
