#include <algorithm>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/ops/attention/selectors/block_geometry.h"
#include "src/ops/attention/selectors/top_k_rows_cuda.cuh"

namespace subq::cuda::selectors {
namespace {

// out[(h * blocks + b) * dim + x]: the mean of rows [b * block, min(rows, (b + 1) * block))
// of head h. One CTA per (block, head), threads across the dimension.
__global__ void block_means_kernel(const float* x, int64_t row_stride, int64_t head_stride, int64_t rows, int dim,
                                   int block, float* out) {
  const int64_t b = blockIdx.x, h = blockIdx.y, blocks = gridDim.x;
  const int64_t r0 = b * block, r1 = min(rows, r0 + block);
  const float inv = 1.f / static_cast<float>(r1 - r0);
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float s = 0.f;
    for (int64_t r = r0; r < r1; ++r) s += x[r * row_stride + h * head_stride + d];
    out[(h * blocks + b) * dim + d] = s * inv;
  }
}

void check_rows_tensor(const Tensor& t, const std::string& w) {
  if (t.device() != Device::cuda) throw Error(w + ": must be in GPU memory, found " + t.str() + " on the CPU");
  if (t.dtype() != DType::f32) throw Error(w + ": must be f32, found " + t.str());
  if (t.ndim() != 3 || t.dim(1) < 1 || t.dim(2) < 1)
    throw Error(w + ": expected [T, heads, head_dim], found " + t.str());
  if (t.stride(2) != 1) throw Error(w + ": the head dimension must be contiguous, found " + t.str());
}

}  // namespace

void check_inputs(const attn::MaskGeometry& g, const Tensor& q, const Tensor& k, int64_t top_k, const char* who) {
  const std::string w = who;
  attn::check_aligned_blocks(g, who);
  if (top_k < 0) throw Error(w + ": top_k must be >= 0, found " + std::to_string(top_k));
  check_rows_tensor(q, w + " q");
  check_rows_tensor(k, w + " k");
  if (q.dim(1) % k.dim(1) != 0)
    throw Error(w + ": the key heads must divide the query heads, found q " + q.str() + " and k " + k.str());
  if (q.dim(0) != g.q_len || k.dim(0) != g.kv_len || k.dim(2) != q.dim(2))
    throw Error(w + ": q " + q.str() + " and k " + k.str() + " do not match the mask's lengths " +
                std::to_string(g.q_len) + "/" + std::to_string(g.kv_len) + " and one head dim");
  if (g.q_offset + g.q_len > g.kv_len)
    throw Error(w + ": causal prefill needs kv_len >= q_offset + q_len, found kv_len " + std::to_string(g.kv_len));
  const int64_t nkb = (g.kv_len + g.k_block - 1) / g.k_block;
  if (nkb > (int64_t{1} << 30) || q.dim(1) > 65535 || q.dim(2) > 256)
    throw Error(w + ": sizes past the GPU kernel's limits (" + std::to_string(nkb) + " key blocks, " +
                std::to_string(q.dim(1)) + " heads, head dim " + std::to_string(q.dim(2)) + " > 256)");
}

Tensor block_means(const Tensor& x, int64_t block) {
  const int64_t rows = x.dim(0), heads = x.dim(1), dim = x.dim(2), blocks = (rows + block - 1) / block;
  Tensor out = empty(DType::f32, {heads, blocks, dim});
  if (blocks == 0) return out;
  block_means_kernel<<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(heads)), 128, 0, stream()>>>(
      x.device_data<float>(), x.stride(0), x.stride(1), rows, static_cast<int>(dim), static_cast<int>(block),
      out.mutable_device_data<float>());
  SUBQ_CUDA_CHECK_LAUNCH("block_means_kernel");
  return out;
}

attn::BlockMask empty_rows(const attn::MaskGeometry& g, int64_t heads) {
  attn::BlockMask mask;
  mask.heads = heads;
  mask.q_len = g.q_len;
  mask.kv_len = g.kv_len;
  mask.q_block = g.q_block;
  mask.k_block = g.k_block;
  mask.q_offset = g.q_offset;
  mask.rule.causal = true;
  mask.row_start.assign(static_cast<size_t>(heads * ((g.q_len + g.q_block - 1) / g.q_block) + 1), 0);
  return mask;
}

Tensor device_row_start(const std::vector<int64_t>& row_start) {
  Tensor starts = Tensor::empty(DType::i32, {static_cast<int64_t>(row_start.size())});
  std::transform(row_start.begin(), row_start.end(), starts.mutable_data<int32_t>(),
                 [](int64_t s) { return static_cast<int32_t>(s); });
  return to_device(starts);
}

DeviceBlockMask top_k_rows(const attn::MaskGeometry& g, int64_t heads, int64_t top_k) {
  const int64_t blk = g.q_block, nqb = (g.q_len + blk - 1) / blk, nkb = (g.kv_len + blk - 1) / blk;
  const int64_t first = g.q_offset / blk;
  DeviceBlockMask d;
  d.host = empty_rows(g, heads);
  std::vector<int64_t>& starts = d.host.row_start;
  for (int64_t r = 0; r < heads * nqb; ++r) {
    const int64_t past = std::min(first + r % nqb, nkb);
    starts[static_cast<size_t>(r) + 1] = starts[static_cast<size_t>(r)] + std::min(top_k, past) + 1;
  }
  const int64_t listed = starts.back();
  if (listed >= (int64_t{1} << 31))
    throw Error("top-k selector: " + std::to_string(listed) + " listed blocks is past the GPU kernel's 32-bit offsets");
  d.row_start = device_row_start(starts);
  d.key_blocks = empty(DType::i32, {std::max<int64_t>(1, listed)});
  return d;
}

}  // namespace subq::cuda::selectors
