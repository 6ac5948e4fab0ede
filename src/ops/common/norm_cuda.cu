// Row-wise RMSNorm and softmax: one block of 256 threads per row, block reductions in
// f32, each row read twice (it stays in L1/L2 between the passes).
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

constexpr int kThreads = 256;

// Sum (or max) over the block; every thread gets the result.
template <bool kMax>
__device__ float block_reduce(float v) {
  __shared__ float partial[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = partial[0];
  for (int i = 1; i < kThreads / 32; ++i) v = kMax ? fmaxf(v, partial[i]) : v + partial[i];
  __syncthreads();  // partial is reused by the next reduction
  return v;
}

// With `residual`, the row is x + residual, also written back to x: the pre-norm
// block's residual add fused into the next norm.
template <class Out>
__global__ void rms_norm_kernel(const float* x, const float* residual, float* sum_out, const float* w, float eps,
                                Out* y, int64_t n) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  auto value = [&](int64_t i) { return residual ? x[base + i] + residual[base + i] : x[base + i]; };
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float v = value(i);
    ss = fmaf(v, v, ss);
  }
  const float inv = rsqrtf(block_reduce<false>(ss) / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float v = value(i);
    y[base + i] = narrow<Out>(v * inv * w[i]);
    if (sum_out) sum_out[base + i] = v;
  }
}

// One block per (row, group): v = x * silu(z), normalised over the group.
template <class Out>
__global__ void gated_rms_norm_kernel(const float* x, const float* z, int64_t z_stride, const float* w, float eps,
                                      Out* y, int64_t I, int64_t group) {
  const int64_t r = blockIdx.x, g0 = static_cast<int64_t>(blockIdx.y) * group;
  const float* xr = x + r * I + g0;
  const float* zr = z + r * z_stride + g0;
  auto value = [&](int64_t i) { return xr[i] * zr[i] / (1.f + __expf(-zr[i])); };
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < group; i += kThreads) {
    const float v = value(i);
    ss = fmaf(v, v, ss);
  }
  const float inv = rsqrtf(block_reduce<false>(ss) / static_cast<float>(group) + eps);
  for (int64_t i = threadIdx.x; i < group; i += kThreads) y[r * I + g0 + i] = narrow<Out>(value(i) * inv * w[g0 + i]);
}

__global__ void softmax_kernel(const float* x, float* y, int64_t n) {
  const float* row = x + blockIdx.x * n;
  float* out = y + blockIdx.x * n;
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) mx = fmaxf(mx, row[i]);
  mx = block_reduce<true>(mx);
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) sum += __expf(row[i] - mx);
  const float inv = 1.f / block_reduce<false>(sum);
  for (int64_t i = threadIdx.x; i < n; i += kThreads) out[i] = __expf(row[i] - mx) * inv;
}

void check_rows(const Tensor& x, const Tensor& y, const char* op) {
  const std::string o(op);
  check_device(x, Device::cuda, (o + " x").c_str());
  check_dtype(x, DType::f32, (o + " x").c_str());
  check_contiguous(x, (o + " x").c_str());
  check_device(y, Device::cuda, (o + " y").c_str());
  check_dtype(y, DType::f32, (o + " y").c_str());
  check_contiguous(y, (o + " y").c_str());
  check_shape(y, x.shape(), (o + " y").c_str());
  if (x.ndim() < 1) throw Error(o + " x: expected at least one dimension, found " + x.str());
  if (x.numel() / std::max<int64_t>(x.dim(-1), 1) > INT32_MAX) throw Error(o + " x: more than 2^31 - 1 rows");
}

}  // namespace

void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y, const Tensor& residual) {
  check_device(x, Device::cuda, "rms_norm x");
  check_dtype(x, DType::f32, "rms_norm x");
  check_contiguous(x, "rms_norm x");
  if (x.ndim() < 1) throw Error("rms_norm x: expected at least one dimension, found " + x.str());
  check_device(y, Device::cuda, "rms_norm y");
  check_contiguous(y, "rms_norm y");
  check_shape(y, x.shape(), "rms_norm y");
  const int64_t n = x.dim(-1);
  check_device(weight, Device::cuda, "rms_norm weight");
  check_dtype(weight, DType::f32, "rms_norm weight");
  check_shape(weight, Shape{n}, "rms_norm weight");
  if (residual.defined()) {
    check_device(residual, Device::cuda, "rms_norm residual");
    check_dtype(residual, DType::f32, "rms_norm residual");
    check_contiguous(residual, "rms_norm residual");
    check_shape(residual, x.shape(), "rms_norm residual");
    if (residual.device_raw_data() == y.device_raw_data() || x.device_raw_data() == y.device_raw_data())
      throw Error("rms_norm: with a residual, y must alias neither x nor the residual");
  }
  const int64_t rows = n ? x.numel() / n : 0;
  if (rows > INT32_MAX) throw Error("rms_norm x: more than 2^31 - 1 rows");
  if (rows == 0) return;
  const float* xp = x.device_data<float>();
  const float* r = residual.defined() ? residual.device_data<float>() : nullptr;
  float* sum = residual.defined() ? x.mutable_device_data<float>() : nullptr;
  const float* w = weight.device_data<float>();
  const unsigned grid = static_cast<unsigned>(rows);
  switch (y.dtype()) {
    case DType::f32: rms_norm_kernel<<<grid, kThreads, 0, stream()>>>(xp, r, sum, w, eps, y.mutable_device_data<float>(), n); break;
    case DType::bf16:
      rms_norm_kernel<<<grid, kThreads, 0, stream()>>>(xp, r, sum, w, eps, static_cast<__nv_bfloat16*>(y.mutable_device_raw_data()), n);
      break;
    case DType::f16:
      rms_norm_kernel<<<grid, kThreads, 0, stream()>>>(xp, r, sum, w, eps, static_cast<__half*>(y.mutable_device_raw_data()), n);
      break;
    default: throw Error("rms_norm y: expected dtype f32, bf16 or f16, found " + y.str());
  }
  SUBQ_CUDA_CHECK_LAUNCH("rms_norm_kernel");
}

void gated_rms_norm(const Tensor& x, const Tensor& z, const Tensor& weight, int64_t group, float eps,
                    const Tensor& y) {
  check_device(x, Device::cuda, "gated_rms_norm x");
  check_dtype(x, DType::f32, "gated_rms_norm x");
  check_contiguous(x, "gated_rms_norm x");
  if (x.ndim() != 2) throw Error("gated_rms_norm x: expected [R, I], found " + x.str());
  const int64_t R = x.dim(0), I = x.dim(1);
  check_device(z, Device::cuda, "gated_rms_norm z");
  check_dtype(z, DType::f32, "gated_rms_norm z");
  if (z.ndim() != 2 || z.dim(0) != R || z.dim(1) != I || (I > 1 && z.stride(1) != 1))
    throw Error("gated_rms_norm z: expected [" + std::to_string(R) + ", " + std::to_string(I) +
                "] with unit column stride, found " + z.str());
  check_device(weight, Device::cuda, "gated_rms_norm weight");
  check_dtype(weight, DType::f32, "gated_rms_norm weight");
  check_shape(weight, Shape{I}, "gated_rms_norm weight");
  check_device(y, Device::cuda, "gated_rms_norm y");
  check_contiguous(y, "gated_rms_norm y");
  check_shape(y, x.shape(), "gated_rms_norm y");
  if (group < 1 || I % group != 0)
    throw Error("gated_rms_norm: group " + std::to_string(group) + " must divide the width " + std::to_string(I));
  if (R > INT32_MAX || I / group > 65535) throw Error("gated_rms_norm x: too many rows or groups: " + x.str());
  if (R * I == 0) return;
  const dim3 grid(static_cast<unsigned>(R), static_cast<unsigned>(I / group));
  const float *xp = x.device_data<float>(), *zp = z.device_data<float>(), *w = weight.device_data<float>();
  const int64_t zs = z.stride(0);
  switch (y.dtype()) {
    case DType::f32:
      gated_rms_norm_kernel<<<grid, kThreads, 0, stream()>>>(xp, zp, zs, w, eps, y.mutable_device_data<float>(), I, group);
      break;
    case DType::bf16:
      gated_rms_norm_kernel<<<grid, kThreads, 0, stream()>>>(xp, zp, zs, w, eps,
                                                             static_cast<__nv_bfloat16*>(y.mutable_device_raw_data()), I, group);
      break;
    case DType::f16:
      gated_rms_norm_kernel<<<grid, kThreads, 0, stream()>>>(xp, zp, zs, w, eps, static_cast<__half*>(y.mutable_device_raw_data()),
                                                             I, group);
      break;
    default: throw Error("gated_rms_norm y: expected dtype f32, bf16 or f16, found " + y.str());
  }
  SUBQ_CUDA_CHECK_LAUNCH("gated_rms_norm_kernel");
}

void softmax(const Tensor& x, const Tensor& y) {
  check_rows(x, y, "softmax");
  const int64_t n = x.dim(-1);
  const int64_t rows = n ? x.numel() / n : 0;
  if (rows == 0) return;
  softmax_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream()>>>(x.device_data<float>(),
                                                                          y.mutable_device_data<float>(), n);
  SUBQ_CUDA_CHECK_LAUNCH("softmax_kernel");
}

}  // namespace subq::cuda
