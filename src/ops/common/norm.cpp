// RMSNorm, LayerNorm and softmax over the last dimension, one row per task.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/common/norm.cpp"
#include <algorithm>
#include <cmath>
#include <limits>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sum of f(x[i]) over a row; vector body plus scalar tail.
template <class F>
float RowSum(const float* x, size_t n, F f) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  auto acc0 = hn::Zero(d), acc1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    acc0 = hn::Add(acc0, f(d, hn::LoadU(d, x + i)));
    acc1 = hn::Add(acc1, f(d, hn::LoadU(d, x + i + N)));
  }
  for (; i + N <= n; i += N) acc0 = hn::Add(acc0, f(d, hn::LoadU(d, x + i)));
  float s = hn::GetLane(hn::SumOfLanes(d, hn::Add(acc0, acc1)));
  const hn::CappedTag<float, 1> d1;
  for (; i < n; ++i) s += hn::GetLane(f(d1, hn::LoadU(d1, x + i)));
  return s;
}

// y[i] = g(x[i], weight[i], bias[i]) with weight/bias optional (nullptr -> 1/0).
template <class G>
void RowMap(const float* x, const float* w, const float* b, float* y, size_t n, G g) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  auto load = [](auto dd, const float* p, size_t at, float dflt) {
    return p ? hn::LoadU(dd, p + at) : hn::Set(dd, dflt);
  };
  for (; i + N <= n; i += N)
    hn::StoreU(g(d, hn::LoadU(d, x + i), load(d, w, i, 1.f), load(d, b, i, 0.f)), d, y + i);
  const hn::CappedTag<float, 1> d1;
  for (; i < n; ++i) hn::StoreU(g(d1, hn::LoadU(d1, x + i), load(d1, w, i, 1.f), load(d1, b, i, 0.f)), d1, y + i);
}

void RmsNormRow(const float* x, const float* weight, float eps, float* y, size_t n) {
  const float ss = RowSum(x, n, [](auto, auto v) { return hn::Mul(v, v); });
  const float inv = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
  RowMap(x, weight, nullptr, y, n, [inv](auto d, auto v, auto w, auto) { return hn::Mul(hn::Mul(v, hn::Set(d, inv)), w); });
}

// Two passes (mean, then centred variance) so rows with a large mean stay accurate; the
// mean is summed relative to x[0] so its partial sums stay small.
void LayerNormRow(const float* x, const float* weight, const float* bias, float eps, float* y, size_t n) {
  const float shift = x[0];
  const float mean = shift + RowSum(x, n, [shift](auto d, auto v) { return hn::Sub(v, hn::Set(d, shift)); }) /
                                 static_cast<float>(n);
  const float var = RowSum(x, n, [mean](auto d, auto v) {
                      const auto c = hn::Sub(v, hn::Set(d, mean));
                      return hn::Mul(c, c);
                    }) / static_cast<float>(n);
  const float inv = 1.f / std::sqrt(var + eps);
  RowMap(x, weight, bias, y, n, [mean, inv](auto d, auto v, auto w, auto b) {
    return hn::MulAdd(hn::Mul(hn::Sub(v, hn::Set(d, mean)), hn::Set(d, inv)), w, b);
  });
}

void SoftmaxRow(const float* x, float* y, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  float mx = -std::numeric_limits<float>::infinity();
  {
    auto m = hn::Set(d, mx);
    size_t i = 0;
    for (; i + N <= n; i += N) m = hn::Max(m, hn::LoadU(d, x + i));
    mx = hn::GetLane(hn::MaxOfLanes(d, m));
    for (; i < n; ++i) mx = std::max(mx, x[i]);
  }
  RowMap(x, nullptr, nullptr, y, n, [mx](auto dd, auto v, auto, auto) { return hn::Exp(dd, hn::Sub(v, hn::Set(dd, mx))); });
  const float inv = 1.f / RowSum(y, n, [](auto, auto v) { return v; });
  RowMap(y, nullptr, nullptr, y, n, [inv](auto dd, auto v, auto, auto) { return hn::Mul(v, hn::Set(dd, inv)); });
}

}  // namespace subq::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "src/core/parallel.h"
#include "src/ops/common/norm.h"
#include "subq/ops.h"

namespace subq {
namespace ops {

HWY_EXPORT(RmsNormRow);
HWY_EXPORT(LayerNormRow);
HWY_EXPORT(SoftmaxRow);

void rms_norm_row(const float* x, const float* weight, float eps, float* y, size_t n) {
  HWY_DYNAMIC_DISPATCH(RmsNormRow)(x, weight, eps, y, n);
}
void layer_norm_row(const float* x, const float* weight, const float* bias, float eps, float* y, size_t n) {
  HWY_DYNAMIC_DISPATCH(LayerNormRow)(x, weight, bias, eps, y, n);
}
void softmax_row(const float* x, float* y, size_t n) { HWY_DYNAMIC_DISPATCH(SoftmaxRow)(x, y, n); }

}  // namespace ops

namespace {

// Checks x/y as f32, contiguous, same shape, at least 1-D; returns the row length.
int64_t check_rows(const Tensor& x, const Tensor& y, const std::string& who) {
  check_dtype(x, DType::f32, (who + ": x").c_str());
  check_dtype(y, DType::f32, (who + ": y").c_str());
  check_contiguous(x, (who + ": x").c_str());
  check_contiguous(y, (who + ": y").c_str());
  check_shape(y, x.shape(), (who + ": y").c_str());
  if (x.ndim() < 1 || x.dim(-1) < 1) throw Error(who + ": x must have a non-empty last dimension, found " + x.str());
  return x.dim(-1);
}

void check_vector(const Tensor& v, int64_t n, const std::string& what) {
  check_dtype(v, DType::f32, what.c_str());
  check_shape(v, Shape{n}, what.c_str());
}

template <class RowFn>
void for_rows(const Tensor& x, const Tensor& y, int64_t n, RowFn fn) {
  const float* in = x.data<float>();
  float* out = y.mutable_data<float>();
  const int64_t rows = x.numel() / n;
  parallel_for(rows, std::max<int64_t>(1, 4096 / n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fn(in + r * n, out + r * n);
  });
}

}  // namespace

void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& y) {
  const int64_t n = check_rows(x, y, "rms_norm");
  check_vector(weight, n, "rms_norm: weight");
  const float* w = weight.data<float>();
  for_rows(x, y, n, [&](const float* in, float* out) { ops::rms_norm_row(in, w, eps, out, static_cast<size_t>(n)); });
}

void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, const Tensor& y) {
  const int64_t n = check_rows(x, y, "layer_norm");
  check_vector(weight, n, "layer_norm: weight");
  if (bias.defined()) check_vector(bias, n, "layer_norm: bias");
  const float* w = weight.data<float>();
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  for_rows(x, y, n, [&](const float* in, float* out) { ops::layer_norm_row(in, w, b, eps, out, static_cast<size_t>(n)); });
}

void softmax(const Tensor& x, const Tensor& y) {
  const int64_t n = check_rows(x, y, "softmax");
  for_rows(x, y, n, [&](const float* in, float* out) { ops::softmax_row(in, out, static_cast<size_t>(n)); });
}

}  // namespace subq
#endif  // HWY_ONCE
