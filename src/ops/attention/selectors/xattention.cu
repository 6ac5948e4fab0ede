// XAttention's block selection on the GPU (xattention.cpp is the CPU form): per head, the
// stride-reshaped queries (rows reversed within each stride) and keys rounded to bf16
// (the values the attention reads), one tensor-core GEMM (f32 accumulation) per chunk of
// query blocks that sums every s x s tile's antidiagonal, then a CTA per query
// block that softmaxes its reshaped rows over their causal columns, sums the
// probabilities per key block and keeps the highest blocks until their share of the
// mass reaches the threshold.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/ops/attention/selectors/dynamic_selectors_cuda.h"
#include "src/ops/attention/selectors/mass_rows_cuda.cuh"
#include "src/ops/attention/selectors/selector_math.h"
#include "src/ops/attention/selectors/top_k_rows_cuda.cuh"
#include "src/ops/common/cuda_ops.h"

namespace subq::cuda {
namespace {

using selectors::cta_reduce;
constexpr int kThreads = selectors::kMassThreads;

// dst [out_rows, s * dim]: row r is rows r*s .. r*s + s-1 of src (in reverse when
// `reverse`) laid end to end, zeros for rows past `rows`.
__global__ void stride_rows_kernel(const float* src, int64_t row_stride, int64_t rows, int dim, int s, bool reverse,
                                   __nv_bfloat16* dst, int64_t out_rows) {
  const int64_t width = static_cast<int64_t>(s) * dim, n = out_rows * width;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, t = i % width / dim, d = i % dim;
    const int64_t row = r * s + (reverse ? s - 1 - t : t);
    dst[i] = __float2bfloat16_rn(row < rows ? src[row * row_stride + d] : 0.f);
  }
}

// Query block qb0 + blockIdx.x: for each of its reshaped rows r (scores at
// scores + (r - r0) * cols), the softmax of scale * score over the columns it may see,
// summed into key blocks (column c in block min(c / per_block, diagonal)); then the
// blocks attn::keep_until_mass keeps (selectors::keep_until_mass) and the diagonal,
// written in increasing order to kept + qb * nkb, their count to counts[qb].
__global__ void __launch_bounds__(kThreads) antidiagonal_blocks_kernel(const float* scores, int64_t cols, int64_t r0,
                                                                       int64_t nr, int per_block, int64_t offset_rows,
                                                                       int first, int nkb, float scale, double mass,
                                                                       int qb0, int32_t* kept, int32_t* counts) {
  extern __shared__ float acc[];  // [diagonal + 1]
  __shared__ float scratch[kThreads / 32];
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

  int32_t* out = kept + static_cast<int64_t>(qb) * nkb;
  const int count = selectors::keep_until_mass(acc, n, mass, diagonal, [&](int kb, bool keep, int before) {
    if (keep) out[before] = kb;
  });
  if (threadIdx.x == 0) counts[qb] = count;
}

void stride_rows(const Tensor& x, int64_t head, int64_t s, bool reverse, int64_t out_rows, const Tensor& dst) {
  const int64_t n = dst.numel();
  stride_rows_kernel<<<blocks_for(n), 256, 0, stream()>>>(x.device_data<float>() + head * x.stride(1), x.stride(0),
                                                       x.dim(0), static_cast<int>(x.dim(2)), static_cast<int>(s),
                                                       reverse, static_cast<__nv_bfloat16*>(dst.mutable_device_raw_data()),
                                                       out_rows);
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
  // Query blocks per GEMM: their scores within 256 MiB (64 Mi floats).
  const int64_t chunk = std::clamp<int64_t>((int64_t{64} << 20) / std::max<int64_t>(1, per_block * nc), 1, nqb);
  const Tensor qs = empty(DType::bf16, {nr, width}), ks = empty(DType::bf16, {nc, width});
  const Tensor scores = empty(DType::f32, {chunk * per_block * nc});
  const size_t smem = static_cast<size_t>(nkb) * sizeof(float);
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(antidiagonal_blocks_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  return selectors::rows_by_head(g, Hq, "xattention_mask", [&](int64_t h, const Tensor& kept, const Tensor& counts) {
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
  });
}

}  // namespace subq::cuda
