// The gated RMSNorm at the output of Mamba-2, GLA and Gated DeltaNet layers against the
// float64 reference, over rows split between threads, in place. The gate rows sit at a
// stride wider than a row; the gap between them holds NaN, so a read past a gate row
// shows in the outputs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "src/core/parallel.h"
#include "src/ops/linear/gated_rms_norm.h"
#include "tests/reference/common.h"
#include "tests/support/random.h"

namespace subq::test {
namespace {

TEST(GatedRmsNorm, RowsMatchReferenceInPlaceOverThreads) {
  auto rng = rng_for_test();
  const int saved = num_threads();
  for (const int threads : {1, 3})
    for (const int64_t rows : {1, 7, 1500})  // 1500 rows of 24: ranges on 3 threads
      for (const int64_t group : {8, 24})
        for (const bool gate_first : {true, false}) {
          set_num_threads(threads);
          const int64_t n = 24, z_stride = n + 5;
          SCOPED_TRACE("threads " + std::to_string(threads) + " rows " + std::to_string(rows) + " group " +
                       std::to_string(group) + (gate_first ? " gate first" : " norm first"));
          const Tensor x = random_tensor(rng, Shape{rows, n}, -2.f, 2.f);
          Tensor z = random_tensor(rng, Shape{rows, z_stride}, -3.f, 3.f);
          const Tensor w = random_tensor(rng, Shape{n}, 0.5f, 1.5f);
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t i = n; i < z_stride; ++i)
              z.mutable_data<float>()[r * z_stride + i] = std::numeric_limits<float>::quiet_NaN();
          const std::vector<double> want = ref::gated_rms_norm(to_double(x), to_double(z), to_double(w), rows, n,
                                                                     z_stride, group, 1e-5, gate_first);
          const Tensor y = x.contiguous();
          ops::gated_rms_norm_rows(y.mutable_data<float>(), z.data<float>(), z_stride, w.data<float>(), rows, n, group,
                                   1e-5f, gate_first ? ops::GateOrder::gate_then_norm : ops::GateOrder::norm_then_gate);
          expect_close(y, want, 1e-5, 1e-6, "gated rms norm");
        }
  set_num_threads(saved);
}

}  // namespace
}  // namespace subq::test
