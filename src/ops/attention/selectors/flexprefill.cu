// FlexPrefill's block selection on the GPU (flexprefill.cpp is the CPU form): per head,
// the last query block's exact attention from an f32 GEMM over every key it may see,
// summed per key (vertical) and per distance (slash); then, all heads at once, a CTA per
// head comparing it with the pooled (block-mean) scores by Jensen-Shannon distance and
// the vertical-slash heads' cuts (the verticals and slashes kept until gamma, as prefix
// counts, so that a row asks in O(1) whether a key block holds one); last, per head, the
// rows: query-aware ones keep their pooled softmax (one GEMM of block means) until
// gamma as XAttention keeps its blocks, vertical-slash ones every block a kept vertical
// or slash reaches.
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

// Row r of the last query block (position p0 + r, scores at scores + r * cols): the max
// of scale * score over the keys it may see and the inverse of their exponentials' sum.
__global__ void __launch_bounds__(kThreads) row_stats_kernel(const float* scores, int64_t cols, int64_t p0,
                                                             float scale, float2* stats) {
  __shared__ float scratch[kThreads / 32];
  const int64_t r = blockIdx.x, allowed = p0 + r + 1;
  const float* row = scores + r * cols;
  float mx = -INFINITY;
  for (int64_t c = threadIdx.x; c < allowed; c += kThreads) mx = fmaxf(mx, scale * row[c]);
  mx = cta_reduce(mx, [](float a, float b) { return fmaxf(a, b); }, scratch);
  float sum = 0.f;
  for (int64_t c = threadIdx.x; c < allowed; c += kThreads) sum += expf(scale * row[c] - mx);
  sum = cta_reduce(sum, [](float a, float b) { return a + b; }, scratch);
  if (threadIdx.x == 0) stats[r] = make_float2(mx, 1.f / sum);
}

// The last query block's mean attention: vertical[j] to key j, slash[d] to the key d
// positions before each row's own, over its `rows` rows (row r at position p0 + r).
__global__ void vertical_slash_kernel(const float* scores, int64_t cols, int rows, int64_t p0, float scale,
                                      const float2* stats, float* vertical, float* slash) {
  const float inv_rows = 1.f / static_cast<float>(rows);
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < cols;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.f, s = 0.f;
    for (int r = 0; r < rows; ++r) {
      const int64_t p = p0 + r;
      if (j > p) continue;
      const float* row = scores + r * cols;
      v += expf(scale * row[j] - stats[r].x) * stats[r].y;
      s += expf(scale * row[p - j] - stats[r].x) * stats[r].y;
    }
    vertical[j] = v * inv_rows;
    slash[j] = s * inv_rows;
  }
}

// Head blockIdx.x (its vertical at vertical + head * cols): whether it is query-aware, the
// Jensen-Shannon distance between the last query block's exact attention per key block
// (sums of vertical) and the softmax of its n pooled scores (the last query block's mean
// q_last . each key block's mean, times scale) below tau.
__global__ void __launch_bounds__(kThreads) pattern_kernel(const float* vertical, int64_t cols, int block,
                                                           const float* q_means, const float* k_means, int group,
                                                           int nqb, int nkb, int dim, int n, float scale, double tau,
                                                           int* query_aware) {
  __shared__ double scratch[kThreads / 32];
  extern __shared__ float pooled[];  // [n]
  const int h = blockIdx.x;
  const float* q_last = q_means + (static_cast<int64_t>(h) * nqb + nqb - 1) * dim;
  const float* k_head = k_means + static_cast<int64_t>(h / group) * nkb * dim;
  vertical += h * cols;
  for (int kb = threadIdx.x; kb < n; kb += kThreads) {
    float dot = 0.f;
    for (int d = 0; d < dim; ++d) dot += q_last[d] * k_head[static_cast<int64_t>(kb) * dim + d];
    pooled[kb] = scale * dot;
  }
  double mx = -INFINITY;
  for (int kb = threadIdx.x; kb < n; kb += kThreads) mx = fmax(mx, static_cast<double>(pooled[kb]));
  mx = cta_reduce(mx, [](double a, double b) { return fmax(a, b); }, scratch);
  double sum = 0;
  for (int kb = threadIdx.x; kb < n; kb += kThreads) sum += ::exp(static_cast<double>(pooled[kb]) - mx);
  sum = cta_reduce(sum, [](double a, double b) { return a + b; }, scratch);
  double js = 0;
  for (int kb = threadIdx.x; kb < n; kb += kThreads) {
    double p = 0;
    for (int64_t j = static_cast<int64_t>(kb) * block; j < min(cols, static_cast<int64_t>(kb + 1) * block); ++j)
      p += vertical[j];
    const double q = ::exp(static_cast<double>(pooled[kb]) - mx) / sum, m = 0.5 * (p + q);
    if (p > 0) js += 0.5 * p * log(p / m);
    if (q > 0) js += 0.5 * q * log(q / m);
  }
  js = cta_reduce(js, [](double a, double b) { return a + b; }, scratch);
  if (threadIdx.x == 0) query_aware[h] = sqrt(fmax(js, 0.0)) < tau;
}

// Head blockIdx.y, if vertical-slash: its kept verticals (blockIdx.x 0) or slashes (1),
// those attn::keep_until_mass keeps for gamma, as prefix counts: prefix[i + 1] = the kept
// indices <= i (each head's arrays cols and cols + 1 long).
__global__ void __launch_bounds__(kThreads) cut_kernel(const float* vertical, const float* slash, int cols,
                                                       double gamma, const int* query_aware, int* vertical_prefix,
                                                       int* slash_prefix) {
  const int h = blockIdx.y;
  if (query_aware[h]) return;
  const float* score = (blockIdx.x == 0 ? vertical : slash) + static_cast<int64_t>(h) * cols;
  int* prefix = (blockIdx.x == 0 ? vertical_prefix : slash_prefix) + static_cast<int64_t>(h) * (cols + 1);
  if (threadIdx.x == 0) prefix[0] = 0;
  selectors::keep_until_mass(score, cols, gamma, -1, [&](int i, bool kept, int before) { prefix[i + 1] = before + kept; });
}

// Row qb (positions p0 .. p1) of the head, written to kept + qb * nkb in increasing block
// order with its count in counts[qb]. Query-aware: the softmax of its pooled scores kept
// until gamma, and the diagonal. Vertical-slash: every block up to the diagonal holding a
// kept vertical j <= p1 or a position p - d of a kept slash d and a row p, and the
// diagonal.
__global__ void __launch_bounds__(kThreads) rows_kernel(const float* pooled, int nkb, int first, int block,
                                                        int64_t q_offset, int64_t q_len, float scale, double gamma,
                                                        const int* query_aware, const int* vertical_prefix,
                                                        const int* slash_prefix, int32_t* kept, int32_t* counts) {
  extern __shared__ float acc[];  // [diagonal + 1]
  __shared__ float scratch[kThreads / 32];
  const int qb = blockIdx.x, diagonal = first + qb, n = diagonal + 1;
  int32_t* out = kept + static_cast<int64_t>(qb) * nkb;
  int count;
  if (*query_aware) {
    const float* row = pooled + static_cast<int64_t>(qb) * nkb;
    float mx = -INFINITY;
    for (int kb = threadIdx.x; kb < n; kb += kThreads) mx = fmaxf(mx, scale * row[kb]);
    mx = cta_reduce(mx, [](float a, float b) { return fmaxf(a, b); }, scratch);
    float sum = 0.f;
    for (int kb = threadIdx.x; kb < n; kb += kThreads) sum += (acc[kb] = expf(scale * row[kb] - mx));
    const float inv = 1.f / cta_reduce(sum, [](float a, float b) { return a + b; }, scratch);
    for (int kb = threadIdx.x; kb < n; kb += kThreads) acc[kb] *= inv;
    __syncthreads();
    count = selectors::keep_until_mass(acc, n, gamma, diagonal, [&](int kb, bool keep, int before) {
      if (keep) out[before] = kb;
    });
  } else {
    const int64_t p0 = q_offset + static_cast<int64_t>(qb) * block;
    const int64_t p1 = q_offset + min(q_len, static_cast<int64_t>(qb + 1) * block) - 1;
    count = selectors::compact_in_order(
        n,
        [&](int kb) {
          const int64_t k0 = static_cast<int64_t>(kb) * block;
          const bool vertical = vertical_prefix[min(k0 + block, p1 + 1)] > vertical_prefix[k0];
          // Slashes d with a row p in [p0, p1] and p - d in [k0, k0 + block).
          const int64_t lo = max(int64_t{0}, p0 - k0 - block + 1), hi = p1 - k0;
          return kb == diagonal || vertical || slash_prefix[hi + 1] > slash_prefix[lo];
        },
        out);
  }
  if (threadIdx.x == 0) counts[qb] = count;
}

}  // namespace

DeviceBlockMask flexprefill_mask(const attn::MaskGeometry& g, const Tensor& q, const Tensor& k, double gamma,
                                 double tau, float scale) {
  selectors::check_inputs(g, q, k, 0, "flexprefill_mask");
  attn::check_flexprefill_parameters(gamma);
  const int64_t blk = g.q_block, Hq = q.dim(1), Dh = q.dim(2), group = Hq / k.dim(1);
  const int64_t nqb = (g.q_len + blk - 1) / blk, nkb = (g.kv_len + blk - 1) / blk, first = g.q_offset / blk;
  if (nqb == 0) return selectors::top_k_rows(g, Hq, 0);
  if (static_cast<size_t>(nkb) * sizeof(float) > device_info().shared_memory_optin)
    throw Error("flexprefill_mask: " + std::to_string(nkb) + " key blocks' scores exceed the GPU's shared memory; " +
                "use a larger block");
  const int64_t cols = g.q_offset + g.q_len;  // every key the last query block may see
  if (cols >= INT32_MAX) throw Error("flexprefill_mask: " + std::to_string(cols) + " keys exceed the GPU kernel's limit");
  const int64_t last = nqb - 1, i0 = last * blk, rows = g.q_len - i0, p0 = g.q_offset + i0;

  const Tensor q_means = selectors::block_means(q, blk), k_means = selectors::block_means(k, blk);
  const Tensor last_q = empty(DType::f32, {rows, Dh}), head_k = empty(DType::f32, {cols, Dh});
  const Tensor scores = empty(DType::f32, {rows, cols}), stats = empty(DType::f32, {rows, 2});
  const Tensor vertical = empty(DType::f32, {Hq, cols}), slash = empty(DType::f32, {Hq, cols});
  const Tensor vertical_prefix = empty(DType::i32, {Hq, cols + 1}), slash_prefix = empty(DType::i32, {Hq, cols + 1});
  const Tensor query_aware = empty(DType::i32, {Hq});
  const auto stats_data = reinterpret_cast<float2*>(stats.mutable_device_data<float>());
  // Every head's vertical and slash sums, from the last query block's scores.
  for (int64_t h = 0; h < Hq; ++h) {
    if (h % group == 0) copy_rows(k.slice(0, 0, cols).select(1, h / group), head_k);
    copy_rows(q.slice(0, i0, g.q_len).select(1, h), last_q);
    cuda::linear(last_q, head_k, Tensor{}, scores);
    row_stats_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream()>>>(scores.device_data<float>(), cols, p0,
                                                                             scale, stats_data);
    SUBQ_CUDA_CHECK_LAUNCH("row_stats_kernel");
    vertical_slash_kernel<<<blocks_for(cols), 256, 0, stream()>>>(
        scores.device_data<float>(), cols, static_cast<int>(rows), p0, scale, stats_data,
        vertical.mutable_device_data<float>() + h * cols, slash.mutable_device_data<float>() + h * cols);
    SUBQ_CUDA_CHECK_LAUNCH("vertical_slash_kernel");
  }
  // Every head's pattern, then the cuts of the vertical-slash heads, all heads at once.
  const int64_t n_last = first + last + 1;
  const size_t smem = static_cast<size_t>(nkb) * sizeof(float);
  for (const void* kernel : {reinterpret_cast<const void*>(pattern_kernel), reinterpret_cast<const void*>(rows_kernel)})
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  pattern_kernel<<<static_cast<unsigned>(Hq), kThreads, static_cast<size_t>(n_last) * sizeof(float), stream()>>>(
      vertical.device_data<float>(), cols, static_cast<int>(blk), q_means.device_data<float>(),
      k_means.device_data<float>(), static_cast<int>(group), static_cast<int>(nqb), static_cast<int>(nkb),
      static_cast<int>(Dh), static_cast<int>(n_last), scale, tau, query_aware.mutable_device_data<int32_t>());
  SUBQ_CUDA_CHECK_LAUNCH("pattern_kernel");
  cut_kernel<<<dim3(2, static_cast<unsigned>(Hq)), kThreads, 0, stream()>>>(
      vertical.device_data<float>(), slash.device_data<float>(), static_cast<int>(cols), gamma,
      query_aware.device_data<int32_t>(), vertical_prefix.mutable_device_data<int32_t>(),
      slash_prefix.mutable_device_data<int32_t>());
  SUBQ_CUDA_CHECK_LAUNCH("cut_kernel");

  const Tensor pooled = empty(DType::f32, {nqb, nkb});
  return selectors::rows_by_head(g, Hq, "flexprefill_mask", [&](int64_t h, const Tensor& kept, const Tensor& counts) {
    cuda::linear(q_means.select(0, h), k_means.select(0, h / group), Tensor{}, pooled);
    rows_kernel<<<static_cast<unsigned>(nqb), kThreads, smem, stream()>>>(
        pooled.device_data<float>(), static_cast<int>(nkb), static_cast<int>(first), static_cast<int>(blk),
        g.q_offset, g.q_len, scale, gamma, query_aware.device_data<int32_t>() + h,
        vertical_prefix.device_data<int32_t>() + h * (cols + 1), slash_prefix.device_data<int32_t>() + h * (cols + 1),
        kept.mutable_device_data<int32_t>(), counts.mutable_device_data<int32_t>());
    SUBQ_CUDA_CHECK_LAUNCH("rows_kernel");
  });
}

}  // namespace subq::cuda
