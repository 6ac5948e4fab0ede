#include "bench/inputs.h"

namespace subq::bench {

void fill_uniform(float* p, int64_t n, float lo, float hi, uint64_t seed) {
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = (static_cast<uint64_t>(i) + seed * 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 31)) * 0x94D049BB133111EBull;
    const double u = static_cast<double>(z >> 40) * 0x1p-24;  // [0, 1)
    p[i] = static_cast<float>(lo + (hi - lo) * u);
  }
}

Tensor random_f32(const Shape& shape, float lo, float hi, uint64_t seed) {
  Tensor t = Tensor::empty(DType::f32, shape);
  fill_uniform(t.mutable_data<float>(), t.numel(), lo, hi, seed);
  return t;
}

}  // namespace subq::bench
