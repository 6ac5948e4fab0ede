// Element-wise activations: SiLU, softplus, exp (Highway vector exp, ~1 ulp).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/common/activations.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Applies f to full vectors and to the tail through a one-lane tag, so every element
// goes through the same vector math (results do not depend on position).
template <class F>
void Map(const float* in, float* out, size_t n, F f) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(f(d, hn::LoadU(d, in + i)), d, out + i);
  const hn::CappedTag<float, 1> d1;
  for (; i < n; ++i) hn::StoreU(f(d1, hn::LoadU(d1, in + i)), d1, out + i);
}

void Silu(const float* in, float* out, size_t n) {
  Map(in, out, n, [](auto d, auto x) {
    const auto one = hn::Set(d, 1.f);
    return hn::Div(x, hn::Add(one, hn::Exp(d, hn::Neg(x))));
  });
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)): no overflow for large |x|.
void Softplus(const float* in, float* out, size_t n) {
  Map(in, out, n, [](auto d, auto x) {
    const auto t = hn::Log1p(d, hn::Exp(d, hn::Neg(hn::Abs(x))));
    return hn::Add(hn::Max(x, hn::Zero(d)), t);
  });
}

void ExpF(const float* in, float* out, size_t n) {
  Map(in, out, n, [](auto d, auto x) { return hn::Exp(d, x); });
}

}  // namespace subq::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "src/core/parallel.h"
#include "src/ops/common/activations.h"
#include "subq/ops.h"

namespace subq {
namespace ops {

HWY_EXPORT(Silu);
HWY_EXPORT(Softplus);
HWY_EXPORT(ExpF);

void silu(const float* x, float* y, size_t n) { HWY_DYNAMIC_DISPATCH(Silu)(x, y, n); }
void softplus(const float* x, float* y, size_t n) { HWY_DYNAMIC_DISPATCH(Softplus)(x, y, n); }
void exp(const float* x, float* y, size_t n) { HWY_DYNAMIC_DISPATCH(ExpF)(x, y, n); }

}  // namespace ops

namespace {

template <class Kernel>
void elementwise(const Tensor& x, const Tensor& y, const char* name, Kernel kernel) {
  const std::string who(name);
  check_dtype(x, DType::f32, (who + ": x").c_str());
  check_dtype(y, DType::f32, (who + ": y").c_str());
  check_contiguous(x, (who + ": x").c_str());
  check_contiguous(y, (who + ": y").c_str());
  check_shape(y, x.shape(), (who + ": y").c_str());
  const float* in = x.data<float>();
  float* out = y.mutable_data<float>();
  parallel_for(x.numel(), 1 << 14, [&](int64_t b, int64_t e) { kernel(in + b, out + b, static_cast<size_t>(e - b)); });
}

}  // namespace

void silu(const Tensor& x, const Tensor& y) { elementwise(x, y, "silu", ops::silu); }
void softplus(const Tensor& x, const Tensor& y) { elementwise(x, y, "softplus", ops::softplus); }
void exp(const Tensor& x, const Tensor& y) { elementwise(x, y, "exp", ops::exp); }

}  // namespace subq
#endif  // HWY_ONCE
