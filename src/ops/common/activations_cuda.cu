// Element-wise kernels: activations, residual add, scaling, dtype conversion, row gathers
// and scatters (grid-stride loops).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/float_cast.cuh"
#include "src/core/cuda/device.h"
#include "src/ops/common/cuda_ops.h"

namespace subq::cuda {
namespace {

__global__ void silu_kernel(const float* x, float* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = x[i] / (1.f + __expf(-x[i]));
}

template <class From, class To>
__global__ void convert_kernel(const From* x, To* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = narrow<To>(widen(x[i]));
}

// Rows r of `rows_per_group` rows each: row (a, b) starts at a * s0 + b * s1.
template <class From, class To>
__global__ void copy_rows_kernel(const From* src, int64_t src_s0, int64_t src_s1, int64_t src_width, To* dst,
                                 int64_t dst_s0, int64_t dst_s1, int64_t dst_width, int64_t rows_per_group,
                                 int64_t rows) {
  const int64_t n = rows * dst_width;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / dst_width, j = i % dst_width;
    const int64_t a = r / rows_per_group, b = r % rows_per_group;
    To& out = dst[a * dst_s0 + b * dst_s1 + j];
    const From* in = src + a * src_s0 + b * src_s1 + j;
    if constexpr (std::is_same_v<From, To>) out = j < src_width ? *in : narrow<To>(0.f);
    else out = narrow<To>(j < src_width ? widen(*in) : 0.f);
  }
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] += y[i];
}

template <Activation A>
__device__ __forceinline__ float activate(float v) {
  if constexpr (A == Activation::silu) {
    return v / (1.f + __expf(-v));
  } else if constexpr (A == Activation::gelu_tanh) {
    return 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
  } else {
    const float r = fmaxf(v, 0.f);
    return r * r;
  }
}

template <Activation A, class Out>
__global__ void gated_activation_kernel(const float* gate_up, Out* out, int64_t F, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float* row = gate_up + i / F * 2 * F;
    out[i] = narrow<Out>(activate<A>(row[i % F]) * row[F + i % F]);
  }
}

template <Activation A, class Out>
__global__ void activation_kernel(const float* x, Out* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = narrow<Out>(activate<A>(x[i]));
}

// Calls launch.template operator()<A, Out>() for the activation and out's dtype.
template <class Launch>
void with_activation(Activation act, const Tensor& out, const char* what, Launch&& launch) {
  const auto by_dtype = [&]<Activation A>() {
    switch (out.dtype()) {
      case DType::f32: return launch.template operator()<A, float>();
      case DType::bf16: return launch.template operator()<A, __nv_bfloat16>();
      case DType::f16: return launch.template operator()<A, __half>();
      default: throw Error(std::string(what) + ": expected dtype f32, bf16 or f16, found " + out.str());
    }
  };
  switch (act) {
    case Activation::silu: return by_dtype.template operator()<Activation::silu>();
    case Activation::gelu_tanh: return by_dtype.template operator()<Activation::gelu_tanh>();
    case Activation::relu2: return by_dtype.template operator()<Activation::relu2>();
  }
  throw Error(std::string(what) + ": unknown activation");
}

template <class T>
__global__ void gather_rows_kernel(const T* src, const int32_t* index, T* dst, int64_t W, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = src[index[i / W] * W + i % W];
}

__global__ void scatter_add_rows_kernel(const float* src, const int32_t* index, const float* weight, float* dst,
                                        int64_t W, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[index[i / W] * W + i % W] += weight[i / W] * src[i];
}

__global__ void scale_kernel(float* x, float s, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] *= s;
}

__global__ void softplus_clamp_kernel(const float* x, int64_t stride, const float* bias, float lo, float hi, float* y,
                                      int64_t rows, int64_t H) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * H;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / H, h = i % H;
    const float v = x[r * stride + h] + bias[h];
    const float sp = v <= 20.f ? log1pf(expf(v)) : v;  // torch's softplus threshold
    y[i] = fminf(fmaxf(sp, lo), hi);
  }
}

void check_f32(const Tensor& t, const char* what) {
  check_device(t, Device::cuda, what);
  check_dtype(t, DType::f32, what);
  check_contiguous(t, what);
}

// A copy_rows operand as [groups, rows per group, width] with its two row strides.
struct RowsView {
  int64_t groups, rows, width, s0, s1;
};

RowsView rows_view(const Tensor& t, const char* what) {
  check_device(t, Device::cuda, what);
  if ((t.ndim() != 2 && t.ndim() != 3) || (t.dim(-1) > 1 && t.stride(-1) != 1))
    throw Error(std::string(what) + ": expected [rows, width] or [groups, rows, width] with unit column stride, found " +
                t.str());
  if (t.ndim() == 2) return {1, t.dim(0), t.dim(1), 0, t.stride(0)};
  return {t.dim(0), t.dim(1), t.dim(2), t.stride(0), t.stride(1)};
}

template <class From, class To>
void launch_copy_rows(const Tensor& src, const RowsView& s, const Tensor& dst, const RowsView& d) {
  const int64_t rows = d.groups * d.rows;
  copy_rows_kernel<<<blocks_for(rows * d.width), 256, 0, stream()>>>(
      static_cast<const From*>(src.device_raw_data()), s.s0, s.s1, s.width, static_cast<To*>(dst.mutable_device_raw_data()),
      d.s0, d.s1, d.width, d.rows, rows);
  SUBQ_CUDA_CHECK_LAUNCH("copy_rows_kernel");
}

}  // namespace

void copy_rows(const Tensor& src, const Tensor& dst) {
  const RowsView s = rows_view(src, "copy_rows src"), d = rows_view(dst, "copy_rows dst");
  if (s.groups != d.groups || s.rows != d.rows)
    throw Error("copy_rows: src " + src.str() + " and dst " + dst.str() + " differ in rows");
  if (dst.numel() == 0) return;
  const DType a = src.dtype(), b = dst.dtype();
  if (a == DType::f32 && b == DType::f32) launch_copy_rows<float, float>(src, s, dst, d);
  else if (a == DType::f32 && b == DType::bf16) launch_copy_rows<float, __nv_bfloat16>(src, s, dst, d);
  else if (a == DType::f32 && b == DType::f16) launch_copy_rows<float, __half>(src, s, dst, d);
  else if (a == DType::bf16 && b == DType::f32) launch_copy_rows<__nv_bfloat16, float>(src, s, dst, d);
  else if (a == DType::f16 && b == DType::f32) launch_copy_rows<__half, float>(src, s, dst, d);
  else if (a == DType::bf16 && b == DType::bf16) launch_copy_rows<__nv_bfloat16, __nv_bfloat16>(src, s, dst, d);
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

void gated_activation(Activation act, const Tensor& gate_up, const Tensor& out) {
  check_f32(gate_up, "gated_activation gate_up");
  check_device(out, Device::cuda, "gated_activation out");
  check_contiguous(out, "gated_activation out");
  if (gate_up.ndim() != 2 || gate_up.dim(1) % 2 != 0)
    throw Error("gated_activation gate_up: expected [M, 2F], found " + gate_up.str());
  const int64_t F = gate_up.dim(1) / 2;
  check_shape(out, Shape{gate_up.dim(0), F}, "gated_activation out");
  const int64_t n = out.numel();
  if (n == 0) return;
  with_activation(act, out, "gated_activation out", [&]<Activation A, class Out>() {
    gated_activation_kernel<A><<<blocks_for(n), 256, 0, stream()>>>(
        gate_up.device_data<float>(), static_cast<Out*>(out.mutable_device_raw_data()), F, n);
    SUBQ_CUDA_CHECK_LAUNCH("gated_activation_kernel");
  });
}

void activation(Activation act, const Tensor& x, const Tensor& y) {
  check_f32(x, "activation x");
  check_device(y, Device::cuda, "activation y");
  check_contiguous(y, "activation y");
  check_shape(y, x.shape(), "activation y");
  const int64_t n = x.numel();
  if (n == 0) return;
  with_activation(act, y, "activation y", [&]<Activation A, class Out>() {
    activation_kernel<A><<<blocks_for(n), 256, 0, stream()>>>(x.device_data<float>(),
                                                              static_cast<Out*>(y.mutable_device_raw_data()), n);
    SUBQ_CUDA_CHECK_LAUNCH("activation_kernel");
  });
}

void gather_rows(const Tensor& src, const Tensor& index, const Tensor& dst) {
  check_device(src, Device::cuda, "gather_rows src");
  check_device(dst, Device::cuda, "gather_rows dst");
  check_device(index, Device::cuda, "gather_rows index");
  check_dtype(index, DType::i32, "gather_rows index");
  check_contiguous(src, "gather_rows src");
  check_contiguous(dst, "gather_rows dst");
  check_contiguous(index, "gather_rows index");
  if (src.ndim() != 2) throw Error("gather_rows src: expected [R, W], found " + src.str());
  if (index.ndim() != 1) throw Error("gather_rows index: expected [n], found " + index.str());
  check_dtype(dst, src.dtype(), "gather_rows dst");
  check_shape(dst, Shape{index.dim(0), src.dim(1)}, "gather_rows dst");
  const int64_t W = src.dim(1), n = dst.numel();
  if (n == 0) return;
  const int32_t* idx = index.device_data<int32_t>();
  switch (dtype_size(src.dtype())) {
    case 4:
      gather_rows_kernel<<<blocks_for(n), 256, 0, stream()>>>(static_cast<const uint32_t*>(src.device_raw_data()), idx,
                                                              static_cast<uint32_t*>(dst.mutable_device_raw_data()), W, n);
      break;
    case 2:
      gather_rows_kernel<<<blocks_for(n), 256, 0, stream()>>>(static_cast<const uint16_t*>(src.device_raw_data()), idx,
                                                              static_cast<uint16_t*>(dst.mutable_device_raw_data()), W, n);
      break;
    default: throw Error("gather_rows src: expected 2- or 4-byte elements, found " + src.str());
  }
  SUBQ_CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& weight, const Tensor& dst) {
  check_f32(src, "scatter_add_rows src");
  check_f32(weight, "scatter_add_rows weight");
  check_f32(dst, "scatter_add_rows dst");
  check_device(index, Device::cuda, "scatter_add_rows index");
  check_dtype(index, DType::i32, "scatter_add_rows index");
  check_contiguous(index, "scatter_add_rows index");
  if (src.ndim() != 2) throw Error("scatter_add_rows src: expected [n, W], found " + src.str());
  if (dst.ndim() != 2 || dst.dim(1) != src.dim(1))
    throw Error("scatter_add_rows dst: expected [R, " + std::to_string(src.dim(1)) + "], found " + dst.str());
  check_shape(index, Shape{src.dim(0)}, "scatter_add_rows index");
  check_shape(weight, Shape{src.dim(0)}, "scatter_add_rows weight");
  const int64_t n = src.numel();
  if (n == 0) return;
  scatter_add_rows_kernel<<<blocks_for(n), 256, 0, stream()>>>(src.device_data<float>(), index.device_data<int32_t>(),
                                                               weight.device_data<float>(),
                                                               dst.mutable_device_data<float>(), src.dim(1), n);
  SUBQ_CUDA_CHECK_LAUNCH("scatter_add_rows_kernel");
}

void scale(const Tensor& x, float s) {
  check_f32(x, "scale x");
  if (x.numel() == 0) return;
  scale_kernel<<<blocks_for(x.numel()), 256, 0, stream()>>>(x.mutable_device_data<float>(), s, x.numel());
  SUBQ_CUDA_CHECK_LAUNCH("scale_kernel");
}

void softplus_clamp(const Tensor& x, const Tensor& bias, float lo, float hi, const Tensor& y) {
  const RowsView v = rows_view(x, "softplus_clamp x");
  check_dtype(x, DType::f32, "softplus_clamp x");
  if (x.ndim() != 2) throw Error("softplus_clamp x: expected [R, H], found " + x.str());
  const int64_t R = x.dim(0), H = x.dim(1);
  check_device(bias, Device::cuda, "softplus_clamp bias");
  check_dtype(bias, DType::f32, "softplus_clamp bias");
  check_shape(bias, Shape{H}, "softplus_clamp bias");
  check_f32(y, "softplus_clamp y");
  check_shape(y, Shape{R, H}, "softplus_clamp y");
  if (!(lo <= hi)) throw Error("softplus_clamp: expected lo <= hi, found " + std::to_string(lo) + " > " + std::to_string(hi));
  if (R * H == 0) return;
  softplus_clamp_kernel<<<blocks_for(R * H), 256, 0, stream()>>>(x.device_data<float>(), v.s1, bias.device_data<float>(),
                                                                 lo, hi, y.mutable_device_data<float>(), R, H);
  SUBQ_CUDA_CHECK_LAUNCH("softplus_clamp_kernel");
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
