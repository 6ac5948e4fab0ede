// The gated RMSNorm at the output of Mamba-2, Gated DeltaNet and GLA layers, over one
// row of n features normalised in groups of `group` (n % group == 0):
//   gate first  (Mamba-2, HF MambaRMSNormGated, norm_before_gate=False):
//       y = rms_norm_groups(x * silu(z)) * weight
//   norm first  (Qwen3-Next Qwen3NextRMSNormGated, fla FusedRMSNormGated):
//       y = rms_norm_groups(x) * weight * silu(z)
#pragma once

#include <cstdint>

namespace subq::ops {

enum class GateOrder { gate_then_norm, norm_then_gate };

// scratch holds n floats; y may alias x.
void gated_rms_norm_row(const float* x, const float* z, const float* weight, int64_t n, int64_t group, float eps,
                        GateOrder order, float* y, float* scratch);

// `rows` rows of y (n floats each, contiguous) in place, row r gated by z + r * z_stride,
// split over the pool.
void gated_rms_norm_rows(float* y, const float* z, int64_t z_stride, const float* weight, int64_t rows, int64_t n,
                         int64_t group, float eps, GateOrder order);

}  // namespace subq::ops
