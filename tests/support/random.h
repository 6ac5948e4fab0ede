// Fresh random inputs for tests. Every run draws a new base seed (printed by the test
// main; SUBQ_TEST_SEED replays one), and each test mixes in its own name, so tests
// see different data each run but any failure is reproducible.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "subq/ops.h"
#include "subq/tensor.h"

namespace subq::test {

inline uint64_t base_seed() {
  static const uint64_t seed = []() -> uint64_t {
    if (const char* s = std::getenv("SUBQ_TEST_SEED")) return std::strtoull(s, nullptr, 10);
    return static_cast<uint64_t>(std::chrono::high_resolution_clock::now().time_since_epoch().count());
  }();
  return seed;
}

// A generator seeded from the base seed and the running test's full name.
inline std::mt19937_64 rng_for_test() {
  const auto* info = testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "";
  return std::mt19937_64(base_seed() ^ std::hash<std::string>{}(name));
}

// Uniform in [lo, hi). Never all zeros.
inline std::vector<float> uniform(std::mt19937_64& rng, size_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

inline std::vector<float> normal(std::mt19937_64& rng, size_t n, float stddev = 1.f) {
  std::normal_distribution<float> d(0.f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// An f32 tensor of the given shape filled from `values` (sizes must match).
inline Tensor tensor_from(const std::vector<float>& values, const Shape& shape) {
  Tensor t = Tensor::empty(DType::f32, shape);
  EXPECT_EQ(static_cast<int64_t>(values.size()), t.numel());
  std::copy(values.begin(), values.end(), t.mutable_data<float>());
  return t;
}

inline Tensor random_tensor(std::mt19937_64& rng, const Shape& shape, float lo = -1.f, float hi = 1.f) {
  return tensor_from(uniform(rng, static_cast<size_t>(shape.numel()), lo, hi), shape);
}

// An f32 output tensor poisoned with NaN, so an element a kernel forgets to write fails.
inline Tensor nan_tensor(const Shape& shape) {
  Tensor t = Tensor::empty(DType::f32, shape);
  std::fill_n(t.mutable_data<float>(), t.numel(), std::numeric_limits<float>::quiet_NaN());
  return t;
}

inline std::vector<double> to_double(const Tensor& t) {
  const Tensor c = t.is_contiguous() ? t : t.contiguous();
  std::vector<double> v(static_cast<size_t>(c.numel()));
  if (c.dtype() == DType::f32) {
    const float* p = c.data<float>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = p[i];
  } else if (c.dtype() == DType::bf16) {
    const bf16* p = c.data<bf16>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = to_float(p[i]);
  } else if (c.dtype() == DType::f16) {
    const f16* p = c.data<f16>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = to_float(p[i]);
  } else {
    ADD_FAILURE() << "to_double: unsupported dtype " << c.str();
  }
  return v;
}

// The largest |v| (at least 1e-30), the scale of an absolute tolerance.
inline double max_abs(const std::vector<double>& v) {
  double m = 1e-30;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// Expects every element finite and |got - want| <= atol + rtol * |want|. Reports the
// worst element. NaN anywhere in `got` (an unwritten output) fails.
inline void expect_close(const std::vector<double>& got, const std::vector<double>& want, double rtol,
                         double atol, const std::string& what = "") {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t worst = 0;
  double worst_excess = -1;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << " (want " << want[i] << ")";
      return;
    }
    const double err = std::abs(got[i] - want[i]);
    const double tol = atol + rtol * std::abs(want[i]);
    if (err > tol) ++bad;
    if (err - tol > worst_excess) {
      worst_excess = err - tol;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements out of tolerance; worst at "
                     << worst << ": got " << got[worst] << ", want " << want[worst] << " (rtol " << rtol
                     << ", atol " << atol << ")";
}

inline void expect_close(const Tensor& got, const std::vector<double>& want, double rtol, double atol,
                         const std::string& what = "") {
  expect_close(to_double(got), want, rtol, atol, what);
}

}  // namespace subq::test
