#include "src/ops/linear/head_layout.h"

#include <string>

namespace subq::ops {
namespace {

void check_f32_rank(const Tensor& t, const char* what, int rank) {
  if (!t.defined()) throw Error(std::string(what) + ": expected a tensor, got none");
  check_dtype(t, DType::f32, what);
  if (t.ndim() != rank)
    throw Error(std::string(what) + ": expected " + std::to_string(rank) + " dimensions, got " + t.str());
}

}  // namespace

HeadRows head_rows(const Tensor& t, const char* what, int64_t B, int64_t T, int64_t H, int64_t d) {
  check_f32_rank(t, what, 4);
  const int64_t heads = t.dim(2);
  if (t.dim(0) != B || t.dim(1) != T || t.dim(3) != d || heads < 1 || H % heads != 0)
    throw Error(std::string(what) + ": expected [" + std::to_string(B) + ", " + std::to_string(T) +
                ", heads dividing " + std::to_string(H) + ", " + std::to_string(d) + "], got " + t.str());
  if (t.stride(3) != 1) throw Error(std::string(what) + ": last dimension must be contiguous, got " + t.str());
  return HeadRows{t.data<float>(), t.stride(0), t.stride(1), t.stride(2), H / heads};
}

HeadRowsOut head_rows_out(const Tensor& t, const char* what, int64_t B, int64_t T, int64_t H, int64_t d) {
  check_f32_rank(t, what, 4);
  check_shape(t, Shape{B, T, H, d}, what);
  if (t.stride(3) != 1) throw Error(std::string(what) + ": last dimension must be contiguous, got " + t.str());
  return HeadRowsOut{t.mutable_data<float>(), t.stride(0), t.stride(1), t.stride(2)};
}

TokenScalars token_scalars(const Tensor& t, const char* what, int64_t B, int64_t T, int64_t H) {
  check_f32_rank(t, what, 3);
  check_shape(t, Shape{B, T, H}, what);
  return TokenScalars{t.data<float>(), t.stride(0), t.stride(1), t.stride(2)};
}

}  // namespace subq::ops
