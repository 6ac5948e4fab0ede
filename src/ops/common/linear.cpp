#include "src/ops/common/gemm.h"
#include "subq/ops.h"

namespace subq {

void linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y) {
  check_dtype(x, DType::f32, "linear: x");
  check_dtype(y, DType::f32, "linear: y");
  if (!w.defined() || w.ndim() != 2) throw Error("linear: weight must be 2-D [N, K], found " + (w.defined() ? w.str() : std::string("undefined")));
  if (w.dtype() != DType::f32 && w.dtype() != DType::bf16 && w.dtype() != DType::f16)
    throw Error("linear: weight must be f32, bf16 or f16, found " + w.str());
  check_contiguous(w, "linear: weight");
  check_contiguous(x, "linear: x");
  check_contiguous(y, "linear: y");
  const int64_t N = w.dim(0), K = w.dim(1);
  if (x.ndim() < 1 || x.dim(-1) != K)
    throw Error("linear: x " + x.str() + " must end in K = " + std::to_string(K) + " to match weight " + w.str());
  const int64_t M = x.numel() / (K ? K : 1);
  if (y.ndim() != x.ndim() || y.dim(-1) != N || y.numel() != M * N)
    throw Error("linear: y " + y.str() + " must be x's shape with last dimension " + std::to_string(N));
  if (bias.defined()) {
    check_dtype(bias, DType::f32, "linear: bias");
    check_shape(bias, Shape{N}, "linear: bias");
  }
  ops::gemm_xwt(M, N, K, x.data<float>(), K, w.raw_data(), w.dtype(), K, y.mutable_data<float>(), N, false);
  if (bias.defined()) {
    float* out = y.mutable_data<float>();
    const float* b = bias.data<float>();
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) out[m * N + n] += b[n];
  }
}

}  // namespace subq
