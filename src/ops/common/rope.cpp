// Rotary position embedding, NeoX / Llama "rotate half" layout: channel i pairs with
// i + rotary_dim/2 in each head.
#include <cmath>
#include <vector>

#include "src/core/parallel.h"
#include "subq/ops.h"

namespace subq {

void rope(const Tensor& x, const Tensor& positions, float theta, int64_t rotary_dim) {
  check_dtype(x, DType::f32, "rope: x");
  check_contiguous(x, "rope: x");
  check_dtype(positions, DType::i32, "rope: positions");
  if (x.ndim() != 3) throw Error("rope: x must be [T, H, Dh], found " + x.str());
  const int64_t T = x.dim(0), H = x.dim(1), Dh = x.dim(2);
  check_shape(positions, Shape{T}, "rope: positions");
  if (rotary_dim <= 0 || rotary_dim % 2 != 0 || rotary_dim > Dh)
    throw Error("rope: rotary_dim must be even and in (0, " + std::to_string(Dh) + "], found " +
                std::to_string(rotary_dim));
  if (!(theta > 0.f)) throw Error("rope: theta must be positive, found " + std::to_string(theta));
  const int64_t half = rotary_dim / 2;
  // inv_freq in double so long contexts keep their angles exact to f32 precision.
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[static_cast<size_t>(i)] = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / rotary_dim);
  const int32_t* pos = positions.data<int32_t>();
  float* data = x.mutable_data<float>();
  parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
    std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(pos[t]) * inv_freq[static_cast<size_t>(i)];
        cos_t[static_cast<size_t>(i)] = static_cast<float>(std::cos(angle));
        sin_t[static_cast<size_t>(i)] = static_cast<float>(std::sin(angle));
      }
      for (int64_t h = 0; h < H; ++h) {
        float* row = data + (t * H + h) * Dh;
        for (int64_t i = 0; i < half; ++i) {
          const float a = row[i], b = row[i + half];
          const float c = cos_t[static_cast<size_t>(i)], s = sin_t[static_cast<size_t>(i)];
          row[i] = a * c - b * s;
          row[i + half] = b * c + a * s;
        }
      }
    }
  });
}

}  // namespace subq
