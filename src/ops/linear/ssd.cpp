#include "src/ops/linear/ssd.h"

#include <string>

#include "src/core/parallel.h"
#include "src/ops/linear/gated_linear_attention.h"
#include "src/ops/linear/head_layout.h"

namespace subq::ops {

void ssd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm, const Tensor& D,
         const Tensor& state, const Tensor& y, int64_t chunk) {
  if (!x.defined() || x.ndim() != 4) throw Error("ssd: x: expected [B, T, H, P]");
  const int64_t B = x.dim(0), T = x.dim(1), H = x.dim(2), P = x.dim(3);
  const HeadRows xr = head_rows(x, "ssd: x", B, T, H, P);
  const TokenScalars dtr = token_scalars(dt, "ssd: dt", B, T, H);
  check_dtype(A, DType::f32, "ssd: A");
  check_shape(A, Shape{H}, "ssd: A");
  check_contiguous(A, "ssd: A");
  if (D.defined()) {
    check_dtype(D, DType::f32, "ssd: D");
    check_shape(D, Shape{H}, "ssd: D");
    check_contiguous(D, "ssd: D");
  }
  const HeadRowsOut yr = head_rows_out(y, "ssd: y", B, T, H, P);
  // log a = dt A, materialised once per call; v = dt x is scaled as the kernel reads it.
  const Tensor log_gate = Tensor::empty(DType::f32, Shape{B, T, H});
  float* gp = log_gate.mutable_data<float>();
  const float* a = A.data<float>();
  for (int64_t bt = 0; bt < B * T; ++bt)
    for (int64_t h = 0; h < H; ++h) gp[bt * H + h] = dtr.at(bt / T, bt % T, h) * a[h];
  LinearAttentionOptions opt;
  opt.gate = LinearGate::per_token;
  if (chunk > 0) opt.chunk = chunk;
  gated_linear_attention(Cm, Bm, x, log_gate, state, y, opt, dt);
  if (!D.defined()) return;
  const float* dp = D.data<float>();
  parallel_for(B * T, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / T, t = bt % T;
      for (int64_t h = 0; h < H; ++h) {
        const float* xs = xr.at(b, t, h);
        float* ys = yr.at(b, t, h);
        for (int64_t i = 0; i < P; ++i) ys[i] += dp[h] * xs[i];
      }
    }
  });
}

}  // namespace subq::ops
