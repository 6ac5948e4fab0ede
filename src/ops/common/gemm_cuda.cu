// linear() through cuBLAS: row-major y = x W^T is column-major y^T = W x^T, i.e. one
// GemmEx with W transposed, bf16/f16 operands on tensor cores and f32 compute; f32
// operands run the f32 GEMM (the handle keeps cuBLAS's default math mode: no TF32).
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/ops/common/cuda_ops.h"

namespace subq::cuda {
namespace {

void check_cublas(cublasStatus_t s, const char* call, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLAS error in ") + call + " at " + __FILE__ + ":" + std::to_string(line) + ": " +
                cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")");
}
#define SUBQ_CUBLAS_CHECK(call) check_cublas((call), #call, __LINE__)

// One handle for the process, bound to subq's stream, with a workspace of its own (so
// that cuBLAS allocates nothing inside a captured CUDA graph).
cublasHandle_t handle() {
  static const cublasHandle_t h = [] {
    constexpr size_t kWorkspace = size_t{32} << 20;
    cublasHandle_t created = nullptr;
    SUBQ_CUBLAS_CHECK(cublasCreate(&created));
    SUBQ_CUBLAS_CHECK(cublasSetStream(created, stream()));
    SUBQ_CUBLAS_CHECK(cublasSetWorkspace(created, device_alloc(kWorkspace), kWorkspace));
    return created;
  }();
  return h;
}

__global__ void add_bias_kernel(void* y, bool y_f32, const float* bias, int64_t rows, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * n) return;
  if (y_f32) {
    static_cast<float*>(y)[i] += bias[i % n];
  } else {
    auto* p = static_cast<__nv_bfloat16*>(y) + i;
    *p = __float2bfloat16(__bfloat162float(*p) + bias[i % n]);
  }
}

__global__ void add_bias_f16_kernel(__half* y, const float* bias, int64_t rows, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows * n) y[i] = __float2half(__half2float(y[i]) + bias[i % n]);
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::bf16: return CUDA_R_16BF;
    case DType::f16: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}

}  // namespace

void linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y) {
  for (const auto& [t, what] : {std::pair{&x, "linear x"}, std::pair{&w, "linear w"}, std::pair{&y, "linear y"}}) {
    check_device(*t, Device::cuda, what);
    check_contiguous(*t, what);
  }
  if (w.dtype() != DType::bf16 && w.dtype() != DType::f16 && w.dtype() != DType::f32)
    throw Error("linear w: expected dtype bf16, f16 or f32 on the GPU, found " + w.str());
  check_dtype(x, w.dtype(), "linear x");
  if (y.dtype() != DType::f32 && y.dtype() != x.dtype())
    throw Error(std::string("linear y: expected dtype f32 or ") + dtype_name(x.dtype()) + ", found " + y.str());
  if (w.ndim() != 2) throw Error("linear w: expected [N, K], found " + w.str());
  const int64_t N = w.dim(0), K = w.dim(1);
  if (x.ndim() < 1 || x.dim(-1) != K)
    throw Error("linear x: expected last dimension " + std::to_string(K) + ", found " + x.str());
  const int64_t M = x.numel() / std::max<int64_t>(K, 1);
  if (y.numel() != M * N || y.dim(-1) != N)
    throw Error("linear y: expected " + std::to_string(M) + " rows of " + std::to_string(N) + ", found " + y.str());
  if (bias.defined()) {
    check_device(bias, Device::cuda, "linear bias");
    check_dtype(bias, DType::f32, "linear bias");
    check_shape(bias, Shape{N}, "linear bias");
  }
  if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX) throw Error("linear: dimensions exceed 2^31 - 1");
  if (M == 0 || N == 0) return;
  const float one = 1.f, zero = 0.f;
  SUBQ_CUBLAS_CHECK(cublasGemmEx(handle(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M),
                                 static_cast<int>(K), &one, w.device_raw_data(), cuda_type(w.dtype()),
                                 static_cast<int>(K), x.device_raw_data(), cuda_type(x.dtype()), static_cast<int>(K),
                                 &zero, y.mutable_device_raw_data(), cuda_type(y.dtype()), static_cast<int>(N),
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (bias.defined()) {
    const int64_t n = M * N;
    const unsigned blocks = static_cast<unsigned>((n + 255) / 256);
    if (y.dtype() == DType::f16)
      add_bias_f16_kernel<<<blocks, 256, 0, stream()>>>(static_cast<__half*>(y.mutable_device_raw_data()),
                                                        bias.device_data<float>(), M, N);
    else
      add_bias_kernel<<<blocks, 256, 0, stream()>>>(y.mutable_device_raw_data(), y.dtype() == DType::f32,
                                                    bias.device_data<float>(), M, N);
    SUBQ_CUDA_CHECK_LAUNCH("add_bias_kernel");
  }
}

}  // namespace subq::cuda
