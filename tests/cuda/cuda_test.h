// Helpers for the CUDA tests: skip without a GPU, move tensors across, poison outputs.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "src/core/cuda/device.h"
#include "subq/ops.h"
#include "tests/support/random.h"

// Every CUDA test starts with this: on a machine without a usable GPU (CI) it skips
// with the reason, so the suite passes there; the GPU machine runs it for real.
#define SUBQ_REQUIRE_GPU()                                                            \
  do {                                                                                \
    if (!::subq::cuda::available()) GTEST_SKIP() << ::subq::cuda::unavailable_reason(); \
  } while (0)

namespace subq::test {

// A host tensor of `dtype` from f32 values (rounded to nearest even for bf16/f16).
inline Tensor host_tensor(const std::vector<float>& values, const Shape& shape, DType dtype) {
  Tensor f = tensor_from(values, shape);
  if (dtype == DType::f32) return f;
  Tensor t = Tensor::empty(dtype, shape);
  convert(f, t);
  return t;
}

// A GPU tensor whose every byte is 0xFF: NaN for f32, bf16 and f16, so an element a
// kernel forgets to write fails expect_close.
inline Tensor poisoned_device_tensor(DType dtype, const Shape& shape) {
  Tensor h = Tensor::empty(dtype, shape);
  std::memset(h.mutable_raw_data(), 0xFF, h.nbytes());
  return cuda::to_device(h);
}

// The values of a GPU tensor, widened to double.
inline std::vector<double> device_values(const Tensor& t) { return to_double(cuda::to_host(t)); }

}  // namespace subq::test
