// The channel-mixing half of a block (src/models/feed_forward.h) on the GPU, for the
// CUDA decoder: gated and plain MLPs of every Activation, and both mixtures of experts.
#pragma once

#include <memory>
#include <string>

#include "src/models/feed_forward.h"
#include "subq/tensor.h"

namespace subq {

class DeviceFeedForward {
 public:
  virtual ~DeviceFeedForward() = default;
  virtual DType input_dtype() const = 0;  // of x in forward(): the first matmul's
  // y[T, D] (f32) = MLP(x[T, D]), both in GPU memory; y must not alias x.
  virtual void forward(const Tensor& x, const Tensor& y) const = 0;
};

// The FeedForward's weights copied to GPU memory; `where` names the layer in errors.
std::unique_ptr<DeviceFeedForward> make_device_feed_forward(const FeedForward& f, const std::string& where);

}  // namespace subq
