// XAttention's block selection on the GPU (xattention.cpp is the CPU form): per head, the
// stride-reshaped queries (rows reversed within each stride) and keys, one f32 GEMM per
// chunk of query blocks that sums every s x s tile's antidiagonal, then a CTA per query
// block that softmaxes its reshaped rows over their causal columns, sums the
// probabilities per key block and keeps the highest blocks until their share of the
// mass reaches the threshold.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/ops/attention/selectors/dynamic_selectors_cuda.h"
#include "src/ops/attention/selectors/selector_math.h"
#include "src/ops/attention/selectors/top_k_rows_cuda.cuh"
#include "src/ops/common/cuda_ops.h"

namespace subq::cuda {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, int64_t{1} << 20)); }

// dst [out_rows, s * dim]: row r is rows r*s .. r*s + s-1 of src (in reverse when
// `reverse`) laid end to end, zeros for rows past `rows`.
__global__ void stride_rows_kernel(const float* src, int64_t row_stride, int64_t rows, int dim, int s, bool reverse,
                                   float* dst, int64_t out_rows) {
  const int64_t width = static_cast<int64_t>(s) * dim, n = out_rows * width;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, t = i % width / dim, d = i % dim;
    const int64_t row = r * s + (reverse ? s - 1 - t : t);
    dst[i] = row < rows ? src[row * row_stride + d] : 0.f;
  }
}

// The CTA's reduction of one value per thread (max or sum), returned to every thread.
template <class T, class Op>
__device__ T cta_reduce(T v, Op op, T* scratch) {
  for (int off = 16; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // scratch is free again
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) v = op(v, scratch[w]);
  return v;
}

// The exclusive prefix over threads (in thread order) of one count per thread.
__device__ int cta_exclusive_scan(int v, int* scratch) {
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

// Sum of the scores at least `floor` (by bit pattern: the scores are >= 0, so it orders
// them as floats do), in the same order for every floor.
__device__ double mass_from(const float* score, int n, unsigned floor, double* scratch) {
  double sum = 0;
  for (int kb = threadIdx.x; kb < n; kb += kThreads)
    if (__float_as_uint(score[kb]) >= floor) sum += score[kb];
  return cta_reduce(sum, [](double a, double b) { return a + b; }, scratch);
}

// Query block qb0 + blockIdx.x: for each of its reshaped rows r (scores at
// scores + (r - r0) * cols), the softmax of scale * score over the columns it may see,
// summed into key blocks (column c in block min(c / per_block, diagonal)); then the
// blocks attn::keep_until_mass keeps, the highest scores (ties: lower blocks first)
// until their sum reaches `mass` of the total, and the diagonal, written in increasing
// order to kept + qb * nkb, their count to counts[qb]. The cut is found without
// sorting: v, the largest score whose scores at least v reach the target mass, by
// bisection over the bit patterns; every score above v is kept, and of the scores equal
// to v the lowest blocks that reach the target.
__global__ void __launch_bounds__(kThreads) antidiagonal_blocks_kernel(const float* scores, int64_t cols, int64_t r0,
                                                                       int64_t nr, int per_block, int64_t offset_rows,
                                                                       int first, int nkb, float scale, double mass,
                                                                       int qb0, int32_t* kept, int32_t* counts) {
  extern __shared__ float acc[];  // [diagonal + 1]
  __shared__ float scratch[kThreads / 32];
  __shared__ double dscratch[kThreads / 32];
  __shared__ int iscratch[kThreads / 32];
  const int qb = qb0 + blockIdx.x, diagonal = first + qb, n = diagonal + 1;
  for (int kb = threadIdx.x; kb < n; kb += kThreads) acc[kb] = 0.f;
  const int64_t r_end = min(nr, static_cast<int64_t>(qb + 1) * per_block);
  for (int64_t r = static_cast<int64_t>(qb) * per_block; r < r_end; ++r) {
    const int64_t allowed = min(cols, offset_rows + r + 1);
    const float* row = scores + (r - r0) * cols;
    float mx = -INFINITY;
    for (int64_t c = threadIdx.x; c < allowed; c += kThreads) mx = fmaxf(mx, scale * row[c]);
    mx = cta_reduce(mx, [](float a, float b) { return fmaxf(a, b); }, scratch);
    float sum = 0.f;
    for (int64_t c = threadIdx.x; c < allowed; c += kThreads) sum += __expf(scale * row[c] - mx);
    const float inv = 1.f / cta_reduce(sum, [](float a, float b) { return a + b; }, scratch);
    for (int kb = threadIdx.x; kb < n; kb += kThreads) {
      const int64_t lo = static_cast<int64_t>(kb) * per_block;
      const int64_t hi = kb == diagonal ? allowed : min(allowed, lo + per_block);
      float p = 0.f;
      for (int64_t c = lo; c < hi; ++c) p += __expf(scale * row[c] - mx);
      acc[kb] += p * inv;
    }
  }
  __syncthreads();

  const double target = mass * mass_from(acc, n, 0u, dscratch);
  unsigned lo = 0, hi = 0x7f800000u;  // mass_from(lo) reaches the target, mass_from(hi) does not
  while (hi - lo > 1) {
    const unsigned mid = lo + (hi - lo) / 2;
    if (mass_from(acc, n, mid, dscratch) >= target) lo = mid;
    else hi = mid;
  }
  const float v = __uint_as_float(lo);
  const double above = mass_from(acc, n, lo + 1, dscratch);  // the scores > v
  // Ties at v taken in block order until the target (at least one block in all); a zero
  // v (the target not reached by rounding) keeps every tie, as the CPU's loop does.
  const int above_count = static_cast<int>(cta_reduce(
      [&] {
        double c = 0;
        for (int kb = threadIdx.x; kb < n; kb += kThreads) c += acc[kb] > v;
        return c;
      }(),
      [](double a, double b) { return a + b; }, dscratch));
  const double ties_needed = v > 0.f ? ceil((target - above) / static_cast<double>(v)) : static_cast<double>(nkb);
  const int ties = static_cast<int>(fmax(fmin(ties_needed, static_cast<double>(nkb)), above_count == 0 ? 1.0 : 0.0));

  // Each thread takes a contiguous run of blocks, so thread order is block order.
  const int per_thread = (n + kThreads - 1) / kThreads;
  const int b0 = min(n, static_cast<int>(threadIdx.x) * per_thread), b1 = min(n, b0 + per_thread);
  int my_ties = 0;
  for (int kb = b0; kb < b1; ++kb) my_ties += acc[kb] == v;
  int tie_rank = cta_exclusive_scan(my_ties, iscratch);
  const auto keep = [&](int kb, int rank) { return kb == diagonal || acc[kb] > v || (acc[kb] == v && rank < ties); };
  int my_kept = 0;
  for (int kb = b0, rank = tie_rank; kb < b1; ++kb) {
    my_kept += keep(kb, rank);
    rank += acc[kb] == v;
  }
  int at = cta_exclusive_scan(my_kept, iscratch);
  int32_t* out = kept + static_cast<int64_t>(qb) * nkb;
  for (int kb = b0, rank = tie_rank; kb < b1; ++kb) {
    if (keep(kb, rank)) out[at++] = kb;
    rank += acc[kb] == v;
  }
  if (threadIdx.x == kThreads - 1) counts[qb] = at;
}

// dst[offsets[qb] ...] = the counts[qb] blocks at kept + qb * nkb, for every query block.
__global__ void compact_rows_kernel(const int32_t* kept, const int32_t* counts, const int32_t* offsets, int nkb,
                                    int nqb, int32_t* dst) {
  for (int qb = blockIdx.x; qb < nqb; qb += gridDim.x)
    for (int i = threadIdx.x; i < counts[qb]; i += blockDim.x)
      dst[offsets[qb] + i] = kept[static_cast<int64_t>(qb) * nkb + i];
}

void stride_rows(const Tensor& x, int64_t head, int64_t s, bool reverse, int64_t out_rows, const Tensor& dst) {
  const int64_t n = dst.numel();
  stride_rows_kernel<<<grid_for(n), 256, 0, stream()>>>(x.device_data<float>() + head * x.stride(1), x.stride(0),
                                                       x.dim(0), static_cast<int>(x.dim(2)), static_cast<int>(s),
                                                       reverse, dst.mutable_device_data<float>(), out_rows);
  SUBQ_CUDA_CHECK_LAUNCH("stride_rows_kernel");
}

}  // namespace

DeviceBlockMask xattention_mask(const attn::MaskGeometry& g, const Tensor& q, const Tensor& k, double threshold,
                                int64_t stride, float scale) {
  selectors::check_inputs(g, q, k, 0, "xattention_mask");
  const int64_t blk = g.q_block, s = stride;
  attn::check_xattention_parameters(blk, threshold, stride);
  const int64_t Hq = q.dim(1), Dh = q.dim(2), group = Hq / k.dim(1);
  const int64_t nqb = (g.q_len + blk - 1) / blk, nkb = (g.kv_len + blk - 1) / blk, first = g.q_offset / blk;
  const int64_t nr = (g.q_len + s - 1) / s, nc = (g.kv_len + s - 1) / s, width = s * Dh, per_block = blk / s;
  if (nqb == 0) return selectors::top_k_rows(g, Hq, 0);
  if (static_cast<size_t>(nkb) * sizeof(float) > device_info().shared_memory_optin)
    throw Error("xattention_mask: " + std::to_string(nkb) + " key blocks' scores exceed the GPU's shared memory; " +
                "use a larger block");
  DeviceBlockMask mask;
  mask.host = selectors::empty_rows(g, Hq);
  std::vector<int64_t>& starts = mask.host.row_start;

  // Query blocks per GEMM: their scores within 256 MiB (64 Mi floats).
  const int64_t chunk = std::clamp<int64_t>((int64_t{64} << 20) / std::max<int64_t>(1, per_block * nc), 1, nqb);
  const Tensor qs = empty(DType::f32, {nr, width}), ks = empty(DType::f32, {nc, width});
  const Tensor scores = empty(DType::f32, {chunk * per_block * nc});
  const Tensor kept = empty(DType::i32, {nqb, nkb}), counts = empty(DType::i32, {nqb});
  const size_t smem = static_cast<size_t>(nkb) * sizeof(float);
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(antidiagonal_blocks_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  // Each head's rows, compacted once its counts are known (one small copy to the host per
  // head), then laid end to end.
  std::vector<Tensor> head_blocks;
  Tensor offsets = Tensor::empty(DType::i32, {nqb});
  for (int64_t h = 0; h < Hq; ++h) {
    stride_rows(q, h, s, true, nr, qs);
    if (h % group == 0) stride_rows(k, h / group, s, false, nc, ks);
    for (int64_t qb0 = 0; qb0 < nqb; qb0 += chunk) {
      const int64_t qb1 = std::min(nqb, qb0 + chunk);
      const int64_t r0 = qb0 * per_block, r1 = std::min(nr, qb1 * per_block);
      const int64_t cols = std::min(nc, g.q_offset / s + r1);  // columns any row here may see
      cuda::linear(qs.slice(0, r0, r1), ks.slice(0, 0, cols), Tensor{},
                   scores.slice(0, 0, (r1 - r0) * cols).view({r1 - r0, cols}));
      antidiagonal_blocks_kernel<<<static_cast<unsigned>(qb1 - qb0), kThreads, smem, stream()>>>(
          scores.device_data<float>(), cols, r0, nr, static_cast<int>(per_block), g.q_offset / s,
          static_cast<int>(first), static_cast<int>(nkb), scale / static_cast<float>(s), threshold,
          static_cast<int>(qb0), kept.mutable_device_data<int32_t>(), counts.mutable_device_data<int32_t>());
      SUBQ_CUDA_CHECK_LAUNCH("antidiagonal_blocks_kernel");
    }
    const Tensor n = to_host(counts);
    int32_t* off = offsets.mutable_data<int32_t>();
    int64_t total = 0;
    for (int64_t qb = 0; qb < nqb; ++qb) {
      off[qb] = static_cast<int32_t>(total);
      total += n.data<int32_t>()[qb];
      starts[static_cast<size_t>(h * nqb + qb + 1)] = starts[static_cast<size_t>(h * nqb)] + total;
    }
    if (starts[static_cast<size_t>((h + 1) * nqb)] >= (int64_t{1} << 31))
      throw Error("xattention_mask: more than 2^31 listed blocks, past the GPU kernel's 32-bit offsets");
    const Tensor blocks = empty(DType::i32, {total});
    const Tensor device_offsets = to_device(offsets);
    compact_rows_kernel<<<static_cast<unsigned>(std::min<int64_t>(nqb, 65535)), 128, 0, stream()>>>(
        kept.device_data<int32_t>(), counts.device_data<int32_t>(), device_offsets.device_data<int32_t>(),
        static_cast<int>(nkb), static_cast<int>(nqb), blocks.mutable_device_data<int32_t>());
    SUBQ_CUDA_CHECK_LAUNCH("compact_rows_kernel");
    head_blocks.push_back(blocks);
  }
  mask.row_start = selectors::device_row_start(starts);
  mask.key_blocks = empty(DType::i32, {starts.back()});
  for (int64_t h = 0; h < Hq; ++h) {
    const Tensor& blocks = head_blocks[static_cast<size_t>(h)];
    const int64_t at = starts[static_cast<size_t>(h * nqb)];
    copy(blocks, mask.key_blocks.slice(0, at, at + blocks.numel()));
  }
  return mask;
}

}  // namespace subq::cuda
