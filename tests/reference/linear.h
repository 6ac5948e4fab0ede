// Float64 reference for y = x · W^T (+ bias): the definition, written for reading.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace subq::ref {

// x is [M, K] with row stride ldx, w is [N, K] with row stride ldw, bias is empty or [N].
// Returns y [M, N] (contiguous) and, in abs_sum, sum_k |x[m,k] w[n,k]| per output: the
// scale against which the rounding error of an f32 dot product is bounded.
struct LinearResult {
  std::vector<double> y;
  std::vector<double> abs_sum;
};

inline LinearResult linear(const std::vector<double>& x, int64_t ldx, const std::vector<double>& w, int64_t ldw,
                           const std::vector<double>& bias, int64_t M, int64_t N, int64_t K) {
  LinearResult r{std::vector<double>(static_cast<size_t>(M * N)), std::vector<double>(static_cast<size_t>(M * N))};
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double acc = bias.empty() ? 0.0 : bias[static_cast<size_t>(n)];
      double mag = std::abs(acc);
      for (int64_t k = 0; k < K; ++k) {
        const double p = x[static_cast<size_t>(m * ldx + k)] * w[static_cast<size_t>(n * ldw + k)];
        acc += p;
        mag += std::abs(p);
      }
      r.y[static_cast<size_t>(m * N + n)] = acc;
      r.abs_sum[static_cast<size_t>(m * N + n)] = mag;
    }
  }
  return r;
}

}  // namespace subq::ref
