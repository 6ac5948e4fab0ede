// A linear layer's weight in GPU memory, for the CUDA decoder's layers (host code, built
// with the CUDA sources only).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "subq/tensor.h"

namespace subq {

// A weight [N, K] in GPU memory in the checkpoint's dtype, and its f32 bias.
struct DeviceLinear {
  Tensor w, bias;
  DeviceLinear() = default;
  DeviceLinear(const Tensor& weight, const Tensor& b);
  // The dtype x should arrive in (a norm or copy writes it so, saving a conversion).
  DType input_dtype() const { return w.dtype(); }
  // y[M, N] (f32) = x[M, K] W^T + bias; x in the weight's dtype, or f32 (rounded here).
  void apply(const Tensor& x, const Tensor& y) const;
};

// Weights stacked along their output rows (one matmul for q/k/v, one for gate/up),
// biases likewise, zeros where one part has none. Host tensors of one dtype; `where`
// names the layer in the error for mixed dtypes.
DeviceLinear stacked(const std::vector<std::pair<Tensor, Tensor>>& parts, const std::string& where);
// The same stack in host memory: {weight, bias or undefined}.
std::pair<Tensor, Tensor> stack_rows(const std::vector<std::pair<Tensor, Tensor>>& parts, const std::string& where);

// A host tensor's copy in GPU memory, or undefined for an undefined one.
Tensor upload_or_empty(const Tensor& t);

}  // namespace subq
