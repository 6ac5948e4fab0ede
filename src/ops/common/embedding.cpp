#include "src/core/parallel.h"
#include "src/ops/common/convert.h"
#include "subq/ops.h"

namespace subq {

void embedding(const Tensor& ids, const Tensor& table, const Tensor& out) {
  check_dtype(ids, DType::i32, "embedding: ids");
  check_contiguous(ids, "embedding: ids");
  check_contiguous(table, "embedding: table");
  if (table.ndim() != 2) throw Error("embedding: table must be [V, D], found " + table.str());
  if (table.dtype() != DType::f32 && table.dtype() != DType::bf16 && table.dtype() != DType::f16)
    throw Error("embedding: table must be f32, bf16 or f16, found " + table.str());
  const int64_t V = table.dim(0), D = table.dim(1), T = ids.numel();
  if (ids.ndim() != 1) throw Error("embedding: ids must be 1-D, found " + ids.str());
  check_dtype(out, DType::f32, "embedding: out");
  check_contiguous(out, "embedding: out");
  check_shape(out, Shape{T, D}, "embedding: out");
  const int32_t* id = ids.data<int32_t>();
  for (int64_t t = 0; t < T; ++t)
    if (id[t] < 0 || id[t] >= V)
      throw Error("embedding: token id " + std::to_string(id[t]) + " at position " + std::to_string(t) +
                  " is outside the vocabulary [0, " + std::to_string(V) + ")");
  const size_t row_bytes = static_cast<size_t>(D) * dtype_size(table.dtype());
  const auto* base = static_cast<const std::byte*>(table.raw_data());
  float* dst = out.mutable_data<float>();
  parallel_for(T, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      ops::to_f32(base + static_cast<size_t>(id[t]) * row_bytes, table.dtype(), dst + t * D, static_cast<size_t>(D));
  });
}

}  // namespace subq
