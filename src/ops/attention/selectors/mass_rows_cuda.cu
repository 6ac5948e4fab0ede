#include <algorithm>
#include <string>
#include <vector>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/ops/attention/selectors/mass_rows_cuda.cuh"
#include "src/ops/attention/selectors/top_k_rows_cuda.cuh"

namespace subq::cuda::selectors {
namespace {

// dst[offsets[qb] ...] = the counts[qb] blocks at kept + qb * nkb, for every query block.
__global__ void compact_rows_kernel(const int32_t* kept, const int32_t* counts, const int32_t* offsets, int nkb,
                                    int nqb, int32_t* dst) {
  for (int qb = blockIdx.x; qb < nqb; qb += gridDim.x)
    for (int i = threadIdx.x; i < counts[qb]; i += blockDim.x)
      dst[offsets[qb] + i] = kept[static_cast<int64_t>(qb) * nkb + i];
}

}  // namespace

DeviceBlockMask rows_by_head(const attn::MaskGeometry& g, int64_t heads, const char* who,
                             const std::function<void(int64_t h, const Tensor& kept, const Tensor& counts)>& fill) {
  const int64_t blk = g.q_block, nqb = (g.q_len + blk - 1) / blk, nkb = (g.kv_len + blk - 1) / blk;
  if (nqb == 0) return top_k_rows(g, heads, 0);
  DeviceBlockMask mask;
  mask.host = empty_rows(g, heads);
  std::vector<int64_t>& starts = mask.host.row_start;
  const Tensor kept = empty(DType::i32, {nqb, nkb}), counts = empty(DType::i32, {nqb});
  std::vector<Tensor> head_blocks;
  Tensor offsets = Tensor::empty(DType::i32, {nqb});
  for (int64_t h = 0; h < heads; ++h) {
    fill(h, kept, counts);
    const Tensor n = to_host(counts);
    int32_t* off = offsets.mutable_data<int32_t>();
    int64_t total = 0;
    for (int64_t qb = 0; qb < nqb; ++qb) {
      off[qb] = static_cast<int32_t>(total);
      total += n.data<int32_t>()[qb];
      starts[static_cast<size_t>(h * nqb + qb + 1)] = starts[static_cast<size_t>(h * nqb)] + total;
    }
    if (starts[static_cast<size_t>((h + 1) * nqb)] >= (int64_t{1} << 31))
      throw Error(std::string(who) + ": more than 2^31 listed blocks, past the GPU kernel's 32-bit offsets");
    const Tensor blocks = empty(DType::i32, {total});
    const Tensor device_offsets = to_device(offsets);
    compact_rows_kernel<<<static_cast<unsigned>(std::min<int64_t>(nqb, 65535)), 128, 0, stream()>>>(
        kept.device_data<int32_t>(), counts.device_data<int32_t>(), device_offsets.device_data<int32_t>(),
        static_cast<int>(nkb), static_cast<int>(nqb), blocks.mutable_device_data<int32_t>());
    SUBQ_CUDA_CHECK_LAUNCH("compact_rows_kernel");
    head_blocks.push_back(blocks);
  }
  mask.row_start = device_row_start(starts);
  mask.key_blocks = empty(DType::i32, {starts.back()});
  for (int64_t h = 0; h < heads; ++h) {
    const Tensor& blocks = head_blocks[static_cast<size_t>(h)];
    const int64_t at = starts[static_cast<size_t>(h * nqb)];
    copy(blocks, mask.key_blocks.slice(0, at, at + blocks.numel()));
  }
  choose_row_pairing(mask);
  return mask;
}

}  // namespace subq::cuda::selectors
