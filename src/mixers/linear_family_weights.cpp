#include "src/mixers/linear_family_weights.h"

#include "subq/ops.h"

namespace subq::mixers {
namespace {

bool float_dtype(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16; }

}  // namespace

void check_projection(const Tensor& w, const Shape& want, const std::string& what) {
  if (!w.defined()) throw Error(what + ": expected a weight of shape " + want.str() + ", got none");
  if (!float_dtype(w.dtype())) throw Error(what + ": expected f32, bf16 or f16, got " + w.str());
  check_shape(w, want, what.c_str());
  check_contiguous(w, what.c_str());
}

Tensor f32_param(const Tensor& t, const Shape& want, const std::string& what) {
  if (!t.defined()) throw Error(what + ": expected a parameter of shape " + want.str() + ", got none");
  if (!float_dtype(t.dtype())) throw Error(what + ": expected f32, bf16 or f16, got " + t.str());
  if (t.numel() != want.numel()) throw Error(what + ": expected shape " + want.str() + ", got " + t.str());
  const Tensor src = t.is_contiguous() ? t : t.contiguous();
  Tensor out = Tensor::empty(DType::f32, want);
  convert(src.view(Shape{want.numel()}), out.view(Shape{want.numel()}));
  return out;
}

Tensor optional_f32_param(const Tensor& t, const Shape& want, const std::string& what) {
  return t.defined() ? f32_param(t, want, what) : Tensor();
}

}  // namespace subq::mixers
