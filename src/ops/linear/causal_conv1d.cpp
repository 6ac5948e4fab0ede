// Vectorised over channels; parallel over (batch, time blocks) since outputs depend on
// inputs only.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/linear/causal_conv1d.cpp"
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// y[c] = bias[c] + sum_j wT[j, c] rows[j][c], optionally SiLU. bias may be null.
template <class D>
HWY_INLINE void ConvRowPart(D d, const float* const* rows, const float* wT, int64_t K, int64_t C, const float* bias,
                            float* y, int64_t c, bool silu) {
  auto acc = bias ? hn::LoadU(d, bias + c) : hn::Zero(d);
  for (int64_t j = 0; j < K; ++j) acc = hn::MulAdd(hn::LoadU(d, wT + j * C + c), hn::LoadU(d, rows[j] + c), acc);
  if (silu) acc = hn::Div(acc, hn::Add(hn::Set(d, 1.f), hn::Exp(d, hn::Neg(acc))));
  hn::StoreU(acc, d, y + c);
}

void ConvRow(const float* const* rows, const float* wT, int64_t K, int64_t C, const float* bias, float* y, bool silu) {
  const hn::ScalableTag<float> d;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  int64_t c = 0;
  for (; c + NL <= C; c += NL) ConvRowPart(d, rows, wT, K, C, bias, y, c, silu);
  const hn::CappedTag<float, 1> d1;
  for (; c < C; ++c) ConvRowPart(d1, rows, wT, K, C, bias, y, c, silu);
}

}  // namespace subq::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "src/core/parallel.h"
#include "src/ops/linear/causal_conv1d.h"

namespace subq::ops {

HWY_EXPORT(ConvRow);

void causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& window, const Tensor& y,
                   bool silu) {
  check_dtype(x, DType::f32, "causal_conv1d: x");
  if (x.ndim() != 3 || x.stride(2) != 1)
    throw Error("causal_conv1d: x: expected [B, T, C] with contiguous channels, got " + x.str());
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2);
  check_dtype(weight, DType::f32, "causal_conv1d: weight");
  if (weight.ndim() != 2 || weight.dim(0) != C || weight.dim(1) < 1)
    throw Error("causal_conv1d: weight: expected [" + std::to_string(C) + ", K], got " + weight.str());
  check_contiguous(weight, "causal_conv1d: weight");
  const int64_t K = weight.dim(1), W = K - 1;
  if (bias.defined()) {
    check_dtype(bias, DType::f32, "causal_conv1d: bias");
    check_shape(bias, Shape{C}, "causal_conv1d: bias");
    check_contiguous(bias, "causal_conv1d: bias");
  }
  check_dtype(window, DType::f32, "causal_conv1d: window");
  check_shape(window, Shape{B, W, C}, "causal_conv1d: window");
  check_contiguous(window, "causal_conv1d: window");
  check_dtype(y, DType::f32, "causal_conv1d: y");
  check_shape(y, Shape{B, T, C}, "causal_conv1d: y");
  check_contiguous(y, "causal_conv1d: y");

  std::vector<float> wT(static_cast<size_t>(K * C));
  const float* w = weight.data<float>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < K; ++j) wT[static_cast<size_t>(j * C + c)] = w[c * K + j];
  const float* xp = x.data<float>();
  const float* bp = bias.defined() ? bias.data<float>() : nullptr;
  float* win = window.mutable_data<float>();
  float* yp = y.mutable_data<float>();
  const int64_t sb = x.stride(0), st = x.stride(1);
  auto input_row = [&](int64_t b, int64_t t) -> const float* {  // t may be negative: from the window
    return t >= 0 ? xp + b * sb + t * st : win + (b * W + W + t) * C;
  };
  parallel_for(B * T, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t begin, int64_t end) {
    std::vector<const float*> rows(static_cast<size_t>(K));
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / T, t = bt % T;
      for (int64_t j = 0; j < K; ++j) rows[static_cast<size_t>(j)] = input_row(b, t - W + j);
      HWY_DYNAMIC_DISPATCH(ConvRow)(rows.data(), wT.data(), K, C, bp, yp + bt * C, silu);
    }
  });
  // Advance the window: the last W inputs of (old window, x).
  std::vector<float> next(static_cast<size_t>(W * C));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < W; ++i) std::copy_n(input_row(b, T - W + i), C, next.data() + i * C);
    std::copy(next.begin(), next.end(), win + b * W * C);
  }
}

}  // namespace subq::ops
#endif  // HWY_ONCE
