// Sums over groups of lanes of a warp, for the recurrences that spread a state's rows over
// several lanes (selective_scan.cu, generalized_delta_rule.cu).
#pragma once

namespace subq::cuda {

// Sums x over each group of P consecutive lanes (a power of two up to 32); every lane of
// the group gets the sum.
template <int P>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int m = 1; m < P; m <<= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
  return x;
}

// The layout group_reduce_scatter<P / 2, M> leaves over a group of P lanes: each lane
// holds kept<M, P>() sums, those of values kept() (lane / spread<M, P>()) + i in x[i].
template <int M, int P>
constexpr int kept() {
  return M >= P ? M / P : 1;
}
template <int M, int P>
constexpr int spread() {
  return M >= P ? 1 : P / M;
}

// Sums each of the N values x[0 .. N) over a group of 2 kMask consecutive lanes (a power
// of two up to 32; `lane`: the lane's index in its group). Each round sends half of the
// values left to the lane kMask apart and keeps the other half, adding the partner's copy;
// once one value is left, both lanes keep its sum. N - 1 shuffles per lane for N values
// over N lanes, where a butterfly per value would take N log2(N). Recursion, not a loop
// over rounds: nvcc does not always unroll that loop, and then keeps x in local memory.
template <int kMask, int N, int M>
__device__ __forceinline__ void group_reduce_scatter(float (&x)[M], int lane) {
  static_assert(N <= M, "more values than the array holds");
  if constexpr (kMask >= 1) {
    if constexpr (N == 1) {
      x[0] += __shfl_xor_sync(0xffffffffu, x[0], kMask);
    } else {
      const bool upper = lane & kMask;
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        const float send = upper ? x[i] : x[i + N / 2];
        const float keep = upper ? x[i + N / 2] : x[i];
        x[i] = keep + __shfl_xor_sync(0xffffffffu, send, kMask);
      }
    }
    group_reduce_scatter<kMask / 2, N == 1 ? 1 : N / 2>(x, lane);
  }
}

}  // namespace subq::cuda
