#include "src/ops/ssm/h3.h"

#include <string>
#include <vector>

#include "src/core/parallel.h"

namespace subq::ops {

void h3_mix(const H3Params& p, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& y,
            LongConvMethod method) {
  const int64_t Dm = p.d_model, dh = p.head_dim;
  if (Dm < 1 || dh < 1 || Dm % dh != 0)
    throw Error("h3_mix: head_dim " + std::to_string(dh) + " must divide d_model " + std::to_string(Dm));
  const int64_t H = Dm / dh;
  check_dtype(q, DType::f32, "h3_mix: q");
  if (q.ndim() != 3 || q.dim(2) != Dm) throw Error("h3_mix: q must be [B, T, " + std::to_string(Dm) + "], found " + q.str());
  const int64_t B = q.dim(0), T = q.dim(1);
  for (const auto& [t, name] : {std::pair{&q, "h3_mix: q"}, {&k, "h3_mix: k"}, {&v, "h3_mix: v"}, {&y, "h3_mix: y"}}) {
    check_dtype(*t, DType::f32, name);
    check_contiguous(*t, name);
    check_shape(*t, Shape{B, T, Dm}, name);
  }
  check_dtype(p.shift_filter, DType::f32, "h3_mix: shift_filter");
  check_contiguous(p.shift_filter, "h3_mix: shift_filter");
  if (p.shift_filter.ndim() != 2 || p.shift_filter.dim(0) != Dm)
    throw Error("h3_mix: shift_filter must be [" + std::to_string(Dm) + ", N], found " + p.shift_filter.str());
  check_dtype(p.shift_D, DType::f32, "h3_mix: shift_D");
  check_shape(p.shift_D, Shape{Dm}, "h3_mix: shift_D");
  check_dtype(p.diag_D, DType::f32, "h3_mix: diag_D");
  check_shape(p.diag_D, Shape{H}, "h3_mix: diag_D");
  if (p.diag.channels != H)
    throw Error("h3_mix: the diagonal SSM must have d_model / head_dim = " + std::to_string(H) + " channels, found " +
                std::to_string(p.diag.channels));

  // k' = shift(k) + shift_D k.
  const Tensor ks = Tensor::empty(DType::f32, {B, T, Dm});
  causal_long_conv(k, p.shift_filter, ks, method);
  float* pks = ks.mutable_data<float>();
  const float* pk = k.data<float>();
  const float* sD = p.shift_D.data<float>();
  parallel_for(B * T, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < Dm; ++c) pks[r * Dm + c] += sD[c] * pk[r * Dm + c];
  });

  // kv channels ordered (d1, d2, h) so that channel c belongs to head c % H.
  const int64_t C = dh * dh * H;
  const Tensor kv = Tensor::empty(DType::f32, {B, T, C});
  float* pkv = kv.mutable_data<float>();
  const float* pv = v.data<float>();
  parallel_for(B * T, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t d1 = 0; d1 < dh; ++d1)
        for (int64_t d2 = 0; d2 < dh; ++d2)
          for (int64_t h = 0; h < H; ++h)
            pkv[r * C + (d1 * dh + d2) * H + h] = pks[r * Dm + h * dh + d1] * pv[r * Dm + h * dh + d2];
  });

  // The head's S4D kernel, repeated for its dh * dh kv channels.
  std::vector<float> Kh(static_cast<size_t>(H * T));
  s4d_kernel(p.diag, T, Kh.data());
  const Tensor K = Tensor::empty(DType::f32, {C, T});
  float* pK = K.mutable_data<float>();
  for (int64_t c = 0; c < C; ++c) std::copy_n(Kh.data() + (c % H) * T, T, pK + c * T);
  const Tensor s = Tensor::empty(DType::f32, {B, T, C});
  causal_long_conv(kv, K, s, method);

  const float* ps = s.data<float>();
  const float* pq = q.data<float>();
  const float* dD = p.diag_D.data<float>();
  float* py = y.mutable_data<float>();
  parallel_for(B * T, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t d2 = 0; d2 < dh; ++d2)
        for (int64_t h = 0; h < H; ++h) {
          float acc = 0;
          for (int64_t d1 = 0; d1 < dh; ++d1) {
            const int64_t c = (d1 * dh + d2) * H + h;
            acc += pq[r * Dm + h * dh + d1] * (ps[r * C + c] + dD[h] * pkv[r * C + c]);
          }
          py[r * Dm + d2 * H + h] = acc;
        }
  });
}

}  // namespace subq::ops
