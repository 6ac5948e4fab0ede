// Rotary position embedding, NeoX / Llama "rotate half" layout: channel i pairs with
// i + rotary_dim/2 in each head. Frequencies of the scaled rope types follow
// transformers' modeling_rope_utils (in double; transformers computes them in float32,
// a relative difference of ~1e-7).
#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "src/core/parallel.h"
#include "subq/ops.h"

namespace subq {
namespace {

std::vector<double> standard_inv_freq(double theta, int64_t rotary_dim) {
  std::vector<double> f(static_cast<size_t>(rotary_dim / 2));
  for (size_t i = 0; i < f.size(); ++i)
    f[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim));
  return f;
}

// Llama 3: wavelengths shorter than original / high_freq_factor keep their frequency,
// longer than original / low_freq_factor are slowed by `factor`, and the band between
// is interpolated linearly in original / wavelength.
void llama3_scale(const RopeSpec& s, std::vector<double>& f) {
  const double low_wavelen = s.original_max_positions / s.low_freq_factor;
  const double high_wavelen = s.original_max_positions / s.high_freq_factor;
  for (double& x : f) {
    const double wavelen = 2 * std::numbers::pi / x;
    if (wavelen > low_wavelen) {
      x /= s.factor;
    } else if (wavelen >= high_wavelen) {
      const double smooth = (s.original_max_positions / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      x = (1 - smooth) * x / s.factor + smooth * x;
    }
  }
}

// YaRN: dimensions below the ramp (many rotations over the original context) keep
// their frequency, those above it are interpolated by `factor`, linearly in between.
void yarn_scale(const RopeSpec& s, std::vector<double>& f) {
  const double dim = static_cast<double>(s.rotary_dim);
  const auto correction_dim = [&](double rotations) {
    return dim * std::log(s.original_max_positions / (rotations * 2 * std::numbers::pi)) / (2 * std::log(s.theta));
  };
  double low = correction_dim(s.beta_fast), high = correction_dim(s.beta_slow);
  if (s.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, dim - 1);
  if (low == high) high += 0.001;  // as transformers does, to avoid dividing by zero
  for (size_t i = 0; i < f.size(); ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    const double extrapolation = 1 - ramp;
    f[i] = f[i] / s.factor * (1 - extrapolation) + f[i] * extrapolation;
  }
}

void check_rope_input(const Tensor& x, const Tensor& positions, int64_t rotary_dim) {
  check_dtype(x, DType::f32, "rope: x");
  check_contiguous(x, "rope: x");
  check_dtype(positions, DType::i32, "rope: positions");
  if (x.ndim() != 3) throw Error("rope: x must be [T, H, Dh], found " + x.str());
  check_shape(positions, Shape{x.dim(0)}, "rope: positions");
  if (rotary_dim <= 0 || rotary_dim % 2 != 0 || rotary_dim > x.dim(2))
    throw Error("rope: rotary_dim must be even and in (0, " + std::to_string(x.dim(2)) + "], found " +
                std::to_string(rotary_dim));
}

}  // namespace

RopeTable rope_table(const RopeSpec& s) {
  if (s.rotary_dim <= 0 || s.rotary_dim % 2 != 0)
    throw Error("rope_table: rotary_dim must be even and positive, found " + std::to_string(s.rotary_dim));
  if (!(s.theta > 0) || !std::isfinite(s.theta))
    throw Error("rope_table: theta must be positive, found " + std::to_string(s.theta));
  if (!(s.attention_factor > 0) || !std::isfinite(s.attention_factor))
    throw Error("rope_table: attention_factor must be positive, found " + std::to_string(s.attention_factor));
  const bool scaled = s.type != RopeSpec::Type::standard;
  if (scaled && (!(s.factor > 0) || !std::isfinite(s.factor)))
    throw Error("rope_table: the scaling factor must be positive, found " + std::to_string(s.factor));
  const bool needs_original = s.type == RopeSpec::Type::llama3 || s.type == RopeSpec::Type::yarn;
  if (needs_original && !(s.original_max_positions > 0))
    throw Error("rope_table: original_max_position_embeddings must be positive, found " +
                std::to_string(s.original_max_positions));
  if (s.type == RopeSpec::Type::llama3 && !(s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor))
    throw Error("rope_table: llama3 needs 0 < low_freq_factor < high_freq_factor, found " +
                std::to_string(s.low_freq_factor) + " and " + std::to_string(s.high_freq_factor));
  if (s.type == RopeSpec::Type::yarn && !(s.beta_fast > 0 && s.beta_slow > 0))
    throw Error("rope_table: yarn needs positive beta_fast and beta_slow, found " + std::to_string(s.beta_fast) +
                " and " + std::to_string(s.beta_slow));

  RopeTable t{standard_inv_freq(s.theta, s.rotary_dim), s.attention_factor};
  switch (s.type) {
    case RopeSpec::Type::standard: break;
    case RopeSpec::Type::linear:
      for (double& f : t.inv_freq) f /= s.factor;
      break;
    case RopeSpec::Type::llama3: llama3_scale(s, t.inv_freq); break;
    case RopeSpec::Type::yarn: yarn_scale(s, t.inv_freq); break;
  }
  return t;
}

void rope(const Tensor& x, const Tensor& positions, const RopeTable& table) {
  const int64_t half = static_cast<int64_t>(table.inv_freq.size());
  check_rope_input(x, positions, 2 * half);
  const int64_t T = x.dim(0), H = x.dim(1), Dh = x.dim(2);
  const int32_t* pos = positions.data<int32_t>();
  float* data = x.mutable_data<float>();
  parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
    std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
    for (int64_t t = t0; t < t1; ++t) {
      // Angles in double so long contexts keep them exact to f32 precision.
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(pos[t]) * table.inv_freq[static_cast<size_t>(i)];
        cos_t[static_cast<size_t>(i)] = static_cast<float>(std::cos(angle) * table.attention_factor);
        sin_t[static_cast<size_t>(i)] = static_cast<float>(std::sin(angle) * table.attention_factor);
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

void rope(const Tensor& x, const Tensor& positions, float theta, int64_t rotary_dim) {
  check_rope_input(x, positions, rotary_dim);
  if (!(theta > 0.f)) throw Error("rope: theta must be positive, found " + std::to_string(theta));
  RopeSpec spec;
  spec.theta = theta;
  spec.rotary_dim = rotary_dim;
  rope(x, positions, rope_table(spec));
}

}  // namespace subq
