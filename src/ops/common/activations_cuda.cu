// Element-wise kernels: SiLU and dtype conversion (grid-stride loops).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/ops/common/cuda_ops.h"

namespace subq::cuda {
namespace {

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, int64_t{1} << 20));
}

__global__ void silu_kernel(const float* x, float* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = x[i] / (1.f + __expf(-x[i]));
}

template <class From, class To>
__global__ void convert_kernel(const From* x, To* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<To, float>) {
      if constexpr (std::is_same_v<From, __nv_bfloat16>) y[i] = __bfloat162float(x[i]);
      else y[i] = __half2float(x[i]);
    } else if constexpr (std::is_same_v<To, __nv_bfloat16>) {
      y[i] = __float2bfloat16_rn(x[i]);
    } else {
      y[i] = __float2half_rn(x[i]);
    }
  }
}

}  // namespace

void silu(const Tensor& x, const Tensor& y) {
  check_device(x, Device::cuda, "silu x");
  check_dtype(x, DType::f32, "silu x");
  check_contiguous(x, "silu x");
  check_device(y, Device::cuda, "silu y");
  check_dtype(y, DType::f32, "silu y");
  check_contiguous(y, "silu y");
  check_shape(y, x.shape(), "silu y");
  if (x.numel() == 0) return;
  silu_kernel<<<blocks_for(x.numel()), 256, 0, stream()>>>(x.device_data<float>(), y.mutable_device_data<float>(),
                                                           x.numel());
  SUBQ_CUDA_CHECK_LAUNCH("silu_kernel");
}

void convert(const Tensor& src, const Tensor& dst) {
  check_device(src, Device::cuda, "convert src");
  check_contiguous(src, "convert src");
  check_device(dst, Device::cuda, "convert dst");
  check_contiguous(dst, "convert dst");
  if (src.numel() != dst.numel())
    throw Error("convert: src " + src.str() + " and dst " + dst.str() + " differ in element count");
  const int64_t n = src.numel();
  const DType a = src.dtype(), b = dst.dtype();
  const bool half_a = a == DType::bf16 || a == DType::f16, half_b = b == DType::bf16 || b == DType::f16;
  if (!((a == DType::f32 && half_b) || (half_a && b == DType::f32)))
    throw Error("convert: expected f32 -> bf16/f16 or bf16/f16 -> f32, found " + src.str() + " -> " + dst.str());
  if (n == 0) return;
  const void* s = src.device_raw_data();
  void* d = dst.mutable_device_raw_data();
  const unsigned g = blocks_for(n);
  if (a == DType::bf16) convert_kernel<<<g, 256, 0, stream()>>>(static_cast<const __nv_bfloat16*>(s), static_cast<float*>(d), n);
  else if (a == DType::f16) convert_kernel<<<g, 256, 0, stream()>>>(static_cast<const __half*>(s), static_cast<float*>(d), n);
  else if (b == DType::bf16) convert_kernel<<<g, 256, 0, stream()>>>(static_cast<const float*>(s), static_cast<__nv_bfloat16*>(d), n);
  else convert_kernel<<<g, 256, 0, stream()>>>(static_cast<const float*>(s), static_cast<__half*>(d), n);
  SUBQ_CUDA_CHECK_LAUNCH("convert_kernel");
}

}  // namespace subq::cuda
