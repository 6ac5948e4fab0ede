// What the GPU's mass-threshold selectors (xattention.cu, flexprefill.cu) share: a CTA's
// form of attn::keep_until_mass, in-order compaction of a predicate, and assembling rows
// whose lengths only the GPU knows into a mask.
#pragma once

#include <cstdint>
#include <functional>

#include "src/ops/attention/flash_attention.h"
#include "src/ops/attention/selectors/static_selectors.h"
#include "subq/tensor.h"

namespace subq::cuda::selectors {

// The CTA size every function below assumes.
constexpr int kMassThreads = 256;

// The CTA's reduction of one value per thread (max or sum), returned to every thread.
template <class T, class Op>
__device__ T cta_reduce(T v, Op op, T* scratch) {
  for (int off = 16; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // scratch is free again
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < kMassThreads / 32; ++w) v = op(v, scratch[w]);
  return v;
}

// The exclusive prefix over threads (in thread order) of one count per thread.
__device__ inline int cta_exclusive_scan(int v, int* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int inclusive = v;
  for (int off = 1; off < 32; off *= 2) {
    const int o = __shfl_up_sync(0xffffffffu, inclusive, off);
    if (lane >= off) inclusive += o;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  int before = 0;
  for (int w = 0; w < warp; ++w) before += scratch[w];
  return before + inclusive - v;
}

// Each thread's contiguous run [begin, end) of [0, n), so that thread order is index order.
struct Run {
  int begin, end;
};
__device__ inline Run thread_run(int n) {
  const int per_thread = (n + kMassThreads - 1) / kMassThreads;
  const int begin = min(n, static_cast<int>(threadIdx.x) * per_thread);
  return {begin, min(n, begin + per_thread)};
}

// Writes the indices i in [0, n) where keep(i) holds to out[0 ..) in increasing order;
// returns their count to every thread.
template <class Keep>
__device__ int compact_in_order(int n, Keep keep, int32_t* out) {
  __shared__ int scratch[kMassThreads / 32];
  const Run run = thread_run(n);
  int mine = 0;
  for (int i = run.begin; i < run.end; ++i) mine += keep(i);
  int at = cta_exclusive_scan(mine, scratch);
  for (int i = run.begin; i < run.end; ++i)
    if (keep(i)) out[at++] = i;
  return cta_reduce(mine, [](int a, int b) { return a + b; }, scratch);
}

// Sum of the scores at least `floor` (by bit pattern: the scores are >= 0, so it orders
// them as floats do), in the same order for every floor.
__device__ inline double mass_from(const float* score, int n, unsigned floor, double* scratch) {
  double sum = 0;
  for (int i = threadIdx.x; i < n; i += kMassThreads)
    if (__float_as_uint(score[i]) >= floor) sum += score[i];
  return cta_reduce(sum, [](double a, double b) { return a + b; }, scratch);
}

// Of score[0, n) (non-negative), the indices attn::keep_until_mass keeps: the highest
// scores, ties lower index first, until their sum reaches `mass` of the total (at least
// one), plus `forced` (-1: none). Calls visit(i, kept, before) for every i, in increasing
// order within each thread's run (thread_run), `before` the count of kept indices below
// i; returns the count kept to every thread. The cut is found without sorting: v, the
// largest score whose scores at least v reach the target mass, by bisection over the bit
// patterns; every score above v is kept, and of the scores equal to v the lowest indices
// that reach the target.
template <class Visit>
__device__ int keep_until_mass(const float* score, int n, double mass, int forced, Visit visit) {
  __shared__ double dscratch[kMassThreads / 32];
  __shared__ int iscratch[kMassThreads / 32];
  const double target = mass * mass_from(score, n, 0u, dscratch);
  unsigned lo = 0, hi = 0x7f800000u;  // mass_from(lo) reaches the target, mass_from(hi) does not
  while (hi - lo > 1) {
    const unsigned mid = lo + (hi - lo) / 2;
    if (mass_from(score, n, mid, dscratch) >= target) lo = mid;
    else hi = mid;
  }
  const float v = __uint_as_float(lo);
  const double above = mass_from(score, n, lo + 1, dscratch);  // the scores > v
  // Ties at v taken in index order until the target (at least one index in all); a zero
  // v (the target not reached by rounding) keeps every tie, as the CPU's loop does.
  const int above_count = static_cast<int>(cta_reduce(
      [&] {
        double c = 0;
        for (int i = threadIdx.x; i < n; i += kMassThreads) c += score[i] > v;
        return c;
      }(),
      [](double a, double b) { return a + b; }, dscratch));
  const double ties_needed = v > 0.f ? ceil((target - above) / static_cast<double>(v)) : static_cast<double>(n);
  const int ties = static_cast<int>(fmax(fmin(ties_needed, static_cast<double>(n)), above_count == 0 ? 1.0 : 0.0));

  const Run run = thread_run(n);
  int my_ties = 0;
  for (int i = run.begin; i < run.end; ++i) my_ties += score[i] == v;
  const int tie_rank = cta_exclusive_scan(my_ties, iscratch);
  const auto keep = [&](int i, int rank) { return i == forced || score[i] > v || (score[i] == v && rank < ties); };
  int my_kept = 0;
  for (int i = run.begin, rank = tie_rank; i < run.end; ++i) {
    my_kept += keep(i, rank);
    rank += score[i] == v;
  }
  int before = cta_exclusive_scan(my_kept, iscratch);
  for (int i = run.begin, rank = tie_rank; i < run.end; ++i) {
    const bool kept = keep(i, rank);
    visit(i, kept, before);
    before += kept;
    rank += score[i] == v;
  }
  return cta_reduce(my_kept, [](int a, int b) { return a + b; }, iscratch);
}

// A causal per-head mask of g's geometry whose rows' lengths only the GPU knows:
// fill(h, kept, counts) enqueues the kernels that write head h's row qb to
// kept [nqb, nkb] (i32, row qb's blocks in increasing order from kept[qb, 0]) and its
// length to counts [nqb]; each head's rows are compacted once its counts are known (one
// small copy to the host per head), then laid end to end.
DeviceBlockMask rows_by_head(const attn::MaskGeometry& g, int64_t heads, const char* who,
                             const std::function<void(int64_t h, const Tensor& kept, const Tensor& counts)>& fill);

}  // namespace subq::cuda::selectors
