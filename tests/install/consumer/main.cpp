#include <cmath>
#include <cstdio>

#include "subq/ops.h"

int main() {
  subq::Tensor x = subq::Tensor::empty(subq::DType::f32, {1, 3});
  subq::Tensor w = subq::Tensor::empty(subq::DType::f32, {2, 3});
  subq::Tensor y = subq::Tensor::empty(subq::DType::f32, {1, 2});
  for (int i = 0; i < 3; ++i) x.mutable_data<float>()[i] = static_cast<float>(i + 1);
  for (int i = 0; i < 6; ++i) w.mutable_data<float>()[i] = static_cast<float>(i);
  subq::linear(x, w, subq::Tensor(), y);
  const float* r = y.data<float>();
  // [1 2 3] . [[0 1 2] [3 4 5]]^T = [8 26]
  if (std::abs(r[0] - 8.f) > 1e-6f || std::abs(r[1] - 26.f) > 1e-6f) {
    std::printf("wrong result %g %g\n", r[0], r[1]);
    return 1;
  }
  std::printf("consumer ok (%s)\n", subq::cpu_target().c_str());
  return 0;
}
