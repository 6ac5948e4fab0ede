#include <vector>

#include "src/ops/common/gemm.h"
#include "subq/ops.h"

namespace subq {
namespace {

// Checks one product's operands; returns M, x's rows.
int64_t check_linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y) {
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
  return M;
}

void add_bias(int64_t M, const Tensor& bias, const Tensor& y) {
  if (!bias.defined()) return;
  const int64_t N = bias.dim(0);
  float* out = y.mutable_data<float>();
  const float* b = bias.data<float>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) out[m * N + n] += b[n];
}

}  // namespace

void linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y) {
  const int64_t M = check_linear(x, w, bias, y), N = w.dim(0), K = w.dim(1);
  ops::gemm_xwt(M, N, K, x.data<float>(), K, w.raw_data(), w.dtype(), K, y.mutable_data<float>(), N, false);
  add_bias(M, bias, y);
}

void linear_group(const Tensor& x, std::span<const LinearOutput> outputs) {
  if (outputs.empty()) return;
  int64_t M = 0;
  bool one_dtype = true;
  for (const LinearOutput& o : outputs) {
    M = check_linear(x, o.w, o.bias, o.y);
    one_dtype &= o.w.dtype() == outputs[0].w.dtype();
  }
  if (!one_dtype) {
    for (const LinearOutput& o : outputs) linear(x, o.w, o.bias, o.y);
    return;
  }
  const int64_t K = x.dim(-1);
  std::vector<ops::WeightOutput> products;
  products.reserve(outputs.size());
  for (const LinearOutput& o : outputs)
    products.push_back({o.w.raw_data(), o.w.dim(0), K, o.y.mutable_data<float>(), o.w.dim(0)});
  ops::gemm_xwt_group(M, K, x.data<float>(), K, outputs[0].w.dtype(), products);
  for (const LinearOutput& o : outputs) add_bias(M, o.bias, o.y);
}

}  // namespace subq
