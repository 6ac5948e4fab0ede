#include "src/ops/linear/head_layout.h"

#include <atomic>
#include <string>

#include "src/core/parallel.h"

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

void check_rows_at_most_zero(const HeadRows& rows, int64_t B, int64_t T, int64_t H, int64_t n, const char* what) {
  const auto row = [&](int64_t r) { return rows.at(r / (T * H), r / H % T, r % H); };
  std::atomic<int64_t> bad{0};
  // At least ~64K values per range, so that a decode step's check stays on the calling
  // thread.
  parallel_for(B * T * H, std::max<int64_t>(1, (int64_t{1} << 16) / n), [&](int64_t begin, int64_t end) {
    int64_t count = 0;
    for (int64_t r = begin; r < end; ++r) {
      const float* x = row(r);
      // A count of bad values, not a bool: GCC vectorises the sum, not an or.
      for (int64_t d = 0; d < n; ++d) count += !(x[d] <= 0.f);
    }
    if (count > 0) bad += count;
  });
  if (bad == 0) return;
  for (int64_t r = 0; r < B * T * H; ++r)
    for (int64_t d = 0; d < n; ++d)
      if (!(row(r)[d] <= 0.f))
        throw Error(std::string(what) + ": expected values <= 0, got " + std::to_string(row(r)[d]));
}

}  // namespace subq::ops
