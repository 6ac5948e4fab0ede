#include "src/models/device_linear.h"

#include <algorithm>
#include <cstddef>
#include <cstring>

#include "src/core/cuda/device.h"
#include "src/ops/common/cuda_ops.h"

namespace subq {

Tensor upload_or_empty(const Tensor& t) { return t.defined() ? cuda::to_device(t) : Tensor(); }

DeviceLinear::DeviceLinear(const Tensor& weight, const Tensor& b) : w(cuda::to_device(weight)), bias(upload_or_empty(b)) {}

void DeviceLinear::apply(const Tensor& x, const Tensor& y) const {
  if (x.dtype() == w.dtype()) return cuda::linear(x, w, bias, y);
  const Tensor rounded = cuda::empty(w.dtype(), x.shape());
  cuda::convert(x, rounded);
  cuda::linear(rounded, w, bias, y);
}

std::pair<Tensor, Tensor> stack_rows(const std::vector<std::pair<Tensor, Tensor>>& parts, const std::string& where) {
  const DType dt = parts[0].first.dtype();
  const int64_t K = parts[0].first.dim(1);
  int64_t rows = 0;
  bool any_bias = false;
  for (const auto& [w, b] : parts) {
    if (w.dtype() != dt)
      throw Error("device cuda: " + where + ": projections of mixed dtypes (" + w.str() + ", " + parts[0].first.str() + ")");
    rows += w.dim(0);
    any_bias = any_bias || b.defined();
  }
  Tensor w = Tensor::empty(dt, {rows, K}), bias = any_bias ? Tensor::zeros(DType::f32, {rows}) : Tensor();
  int64_t r = 0;
  for (const auto& [pw, pb] : parts) {
    const Tensor c = pw.is_contiguous() ? pw : pw.contiguous();
    std::memcpy(static_cast<std::byte*>(w.mutable_raw_data()) + r * K * dtype_size(dt), c.raw_data(), c.nbytes());
    if (pb.defined()) std::copy_n(pb.data<float>(), pw.dim(0), bias.mutable_data<float>() + r);
    r += pw.dim(0);
  }
  return {w, bias};
}

DeviceLinear stacked(const std::vector<std::pair<Tensor, Tensor>>& parts, const std::string& where) {
  const auto [w, bias] = stack_rows(parts, where);
  return {w, bias};
}

}  // namespace subq
