// Rotary embedding and embedding lookup.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/float_cast.cuh"
#include "src/core/cuda/device.h"
#include "src/ops/common/cuda_ops.h"

namespace subq::cuda {
namespace {

// One thread per (t, h, i < pairs): rotates the pair (i, i + pairs). The angle is
// computed in double: pos * inv_freq loses precision in f32 at long positions.
__global__ void rope_kernel(float* x, int64_t token_stride, const int32_t* pos, const double* inv_freq,
                            double attention_factor, int64_t T, int64_t H, int64_t Dh, int64_t pairs) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= T * H * pairs) return;
  const int64_t i = idx % pairs, th = idx / pairs;
  const int64_t t = th / H;
  double s, c;
  sincos(pos[t] * inv_freq[i], &s, &c);
  s *= attention_factor;
  c *= attention_factor;
  float* row = x + t * token_stride + (th % H) * Dh;
  const float a = row[i], b = row[i + pairs];
  row[i] = static_cast<float>(a * c - b * s);
  row[i + pairs] = static_cast<float>(b * c + a * s);
}

// One block per token; a bad id raises the flag instead of reading out of bounds.
template <class T>
__global__ void embedding_kernel(const int32_t* ids, const T* table, float* out, int64_t V, int64_t D, int* bad) {
  const int32_t id = ids[blockIdx.x];
  float* row = out + static_cast<int64_t>(blockIdx.x) * D;
  if (id < 0 || id >= V) {
    if (threadIdx.x == 0) atomicExch(bad, 1);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) row[j] = NAN;
    return;
  }
  const T* src = table + static_cast<int64_t>(id) * D;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) row[j] = widen(src[j]);
}

}  // namespace

DeviceRopeTable upload(const RopeTable& table) {
  DeviceRopeTable d;
  d.pairs = static_cast<int64_t>(table.inv_freq.size());
  d.attention_factor = table.attention_factor;
  if (d.pairs == 0) return d;
  const size_t bytes = table.inv_freq.size() * sizeof(double);
  d.inv_freq = std::shared_ptr<void>(device_alloc(bytes), device_free);
  SUBQ_CUDA_CHECK(cudaMemcpyAsync(d.inv_freq.get(), table.inv_freq.data(), bytes, cudaMemcpyHostToDevice, stream()));
  synchronize();  // the host table may go away when this returns
  return d;
}

void rope(const Tensor& x, const Tensor& positions, const DeviceRopeTable& table) {
  check_device(x, Device::cuda, "rope x");
  check_dtype(x, DType::f32, "rope x");
  if (x.ndim() != 3 || x.stride(2) != 1 || x.stride(1) != x.dim(2) || x.stride(0) < x.dim(1) * x.dim(2))
    throw Error("rope x: expected [T, H, Dh] with contiguous heads, found " + x.str());
  const int64_t T = x.dim(0), H = x.dim(1), Dh = x.dim(2);
  check_device(positions, Device::cuda, "rope positions");
  check_dtype(positions, DType::i32, "rope positions");
  check_shape(positions, Shape{T}, "rope positions");
  if (2 * table.pairs > Dh)
    throw Error("rope: the table rotates " + std::to_string(2 * table.pairs) + " channels, the heads have " +
                std::to_string(Dh));
  const int64_t n = T * H * table.pairs;
  if (n == 0) return;
  rope_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream()>>>(
      x.mutable_device_data<float>(), x.stride(0), positions.device_data<int32_t>(), static_cast<const double*>(table.inv_freq.get()),
      table.attention_factor, T, H, Dh, table.pairs);
  SUBQ_CUDA_CHECK_LAUNCH("rope_kernel");
}

void embedding(const Tensor& ids, const Tensor& table, const Tensor& out, bool check_ids) {
  check_device(ids, Device::cuda, "embedding ids");
  check_dtype(ids, DType::i32, "embedding ids");
  check_contiguous(ids, "embedding ids");
  if (ids.ndim() != 1) throw Error("embedding ids: expected [T], found " + ids.str());
  check_device(table, Device::cuda, "embedding table");
  check_contiguous(table, "embedding table");
  if (table.ndim() != 2 || table.dtype() == DType::i8 || table.dtype() == DType::i32)
    throw Error("embedding table: expected [V, D] f32/bf16/f16, found " + table.str());
  const int64_t T = ids.dim(0), V = table.dim(0), D = table.dim(1);
  check_device(out, Device::cuda, "embedding out");
  check_dtype(out, DType::f32, "embedding out");
  check_shape(out, Shape{T, D}, "embedding out");
  if (T == 0) return;
  if (T > INT32_MAX) throw Error("embedding ids: more than 2^31 - 1 tokens");
  const Tensor flag = empty(DType::i32, {1});
  SUBQ_CUDA_CHECK(cudaMemsetAsync(flag.mutable_device_raw_data(), 0, sizeof(int), stream()));
  int* bad = flag.mutable_device_data<int32_t>();
  const auto* id = ids.device_data<int32_t>();
  float* o = out.mutable_device_data<float>();
  const unsigned grid = static_cast<unsigned>(T);
  switch (table.dtype()) {
    case DType::f32: embedding_kernel<<<grid, 128, 0, stream()>>>(id, table.device_data<float>(), o, V, D, bad); break;
    case DType::bf16:
      embedding_kernel<<<grid, 128, 0, stream()>>>(id, reinterpret_cast<const __nv_bfloat16*>(table.device_data<bf16>()), o, V, D, bad);
      break;
    default:
      embedding_kernel<<<grid, 128, 0, stream()>>>(id, reinterpret_cast<const __half*>(table.device_data<f16>()), o, V, D, bad);
      break;
  }
  SUBQ_CUDA_CHECK_LAUNCH("embedding_kernel");
  if (!check_ids) return;  // the caller checked them: no wait for the flag
  int32_t flagged = 0;
  SUBQ_CUDA_CHECK(cudaMemcpyAsync(&flagged, bad, sizeof(int), cudaMemcpyDeviceToHost, stream()));
  synchronize();
  if (flagged) throw Error("embedding ids: an id is outside [0, " + std::to_string(V) + ")");
}

}  // namespace subq::cuda
