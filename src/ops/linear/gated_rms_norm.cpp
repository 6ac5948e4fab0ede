#include "src/ops/linear/gated_rms_norm.h"

#include <cstddef>

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

}  // namespace subq::ops
