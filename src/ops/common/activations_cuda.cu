// Element-wise kernels: SiLU, residual add, scaling, dtype conversion (grid-stride loops).
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

template <class T>
__device__ __forceinline__ float widen(T v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else return __half2float(v);
}

template <class T>
__device__ __forceinline__ T narrow(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return __float2half_rn(v);
}

template <class From, class To>
__global__ void convert_kernel(const From* x, To* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = narrow<To>(widen(x[i]));
}

template <class From, class To>
__global__ void copy_rows_kernel(const From* src, int64_t src_stride, int64_t src_width, To* dst, int64_t dst_stride,
                                 int64_t dst_width, int64_t rows) {
  const int64_t n = rows * dst_width;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / dst_width, j = i % dst_width;
    if constexpr (std::is_same_v<From, To>) dst[r * dst_stride + j] = j < src_width ? src[r * src_stride + j] : narrow<To>(0.f);
    else dst[r * dst_stride + j] = narrow<To>(j < src_width ? widen(src[r * src_stride + j]) : 0.f);
  }
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] += y[i];
}

__global__ void silu_mul_kernel(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = g[i] / (1.f + __expf(-g[i])) * u[i];
}

__global__ void scale_kernel(float* x, float s, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] *= s;
}

void check_f32(const Tensor& t, const char* what) {
  check_device(t, Device::cuda, what);
  check_dtype(t, DType::f32, what);
  check_contiguous(t, what);
}

void check_rows(const Tensor& t, const char* what) {
  check_device(t, Device::cuda, what);
  if (t.ndim() != 2 || (t.dim(1) > 1 && t.stride(1) != 1) || t.stride(0) < t.dim(1))
    throw Error(std::string(what) + ": expected [rows, width] with unit column stride, found " + t.str());
}

template <class From, class To>
void launch_copy_rows(const Tensor& src, const Tensor& dst) {
  const int64_t rows = dst.dim(0), w = dst.dim(1);
  copy_rows_kernel<<<blocks_for(rows * w), 256, 0, stream()>>>(
      static_cast<const From*>(src.device_raw_data()), src.stride(0), src.dim(1),
      static_cast<To*>(dst.mutable_device_raw_data()), dst.stride(0), w, rows);
  SUBQ_CUDA_CHECK_LAUNCH("copy_rows_kernel");
}

}  // namespace

void copy_rows(const Tensor& src, const Tensor& dst) {
  check_rows(src, "copy_rows src");
  check_rows(dst, "copy_rows dst");
  if (src.dim(0) != dst.dim(0)) throw Error("copy_rows: src " + src.str() + " and dst " + dst.str() + " differ in rows");
  if (dst.numel() == 0) return;
  const DType a = src.dtype(), b = dst.dtype();
  if (a == DType::f32 && b == DType::f32) launch_copy_rows<float, float>(src, dst);
  else if (a == DType::f32 && b == DType::bf16) launch_copy_rows<float, __nv_bfloat16>(src, dst);
  else if (a == DType::f32 && b == DType::f16) launch_copy_rows<float, __half>(src, dst);
  else if (a == DType::bf16 && b == DType::f32) launch_copy_rows<__nv_bfloat16, float>(src, dst);
  else if (a == DType::f16 && b == DType::f32) launch_copy_rows<__half, float>(src, dst);
  else if (a == DType::bf16 && b == DType::bf16) launch_copy_rows<__nv_bfloat16, __nv_bfloat16>(src, dst);
  else throw Error("copy_rows: unsupported " + src.str() + " -> " + dst.str());
}

void add_into(const Tensor& x, const Tensor& y) {
  check_f32(x, "add_into x");
  check_f32(y, "add_into y");
  if (x.numel() != y.numel()) throw Error("add_into: x " + x.str() + " and y " + y.str() + " differ in element count");
  if (x.numel() == 0) return;
  add_kernel<<<blocks_for(x.numel()), 256, 0, stream()>>>(x.mutable_device_data<float>(), y.device_data<float>(),
                                                          x.numel());
  SUBQ_CUDA_CHECK_LAUNCH("add_kernel");
}

void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) {
  check_f32(gate, "silu_mul gate");
  check_f32(up, "silu_mul up");
  check_f32(out, "silu_mul out");
  if (gate.numel() != up.numel() || gate.numel() != out.numel())
    throw Error("silu_mul: gate " + gate.str() + ", up " + up.str() + " and out " + out.str() + " differ in size");
  if (gate.numel() == 0) return;
  silu_mul_kernel<<<blocks_for(gate.numel()), 256, 0, stream()>>>(gate.device_data<float>(), up.device_data<float>(),
                                                                  out.mutable_device_data<float>(), gate.numel());
  SUBQ_CUDA_CHECK_LAUNCH("silu_mul_kernel");
}

void scale(const Tensor& x, float s) {
  check_f32(x, "scale x");
  if (x.numel() == 0) return;
  scale_kernel<<<blocks_for(x.numel()), 256, 0, stream()>>>(x.mutable_device_data<float>(), s, x.numel());
  SUBQ_CUDA_CHECK_LAUNCH("scale_kernel");
}

void silu(const Tensor& x, const Tensor& y) {
  check_f32(x, "silu x");
  check_f32(y, "silu y");
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
