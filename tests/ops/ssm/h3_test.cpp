// H3 token mixing against a float64 definition written from the paper's equations, with
// the diagonal SSM run as its recurrence (so the FFT convolution path is checked against
// the recurrent form), for head_dim 1 and 2, odd T, batch > 1.
#include <gtest/gtest.h>

#include <cmath>

#include "src/ops/ssm/h3.h"
#include "tests/reference/ssm.h"
#include "tests/support/random.h"

namespace subq {
namespace {

using test::random_tensor;
using test::to_double;

TEST(H3, MatchesFloat64Definition) {
  auto rng = test::rng_for_test();
  for (const auto& [dh, Dm, T, Nshift] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{1, 13, 97, 4}, {2, 14, 61, 8}}) {
    const int64_t B = 2, H = Dm / dh, M = 8;
    ops::S4DParams sp;
    sp.channels = H;
    sp.modes = M;
    const auto A = ops::s4d_init_A(2 * M, ops::S4DInit::lin);
    const auto c = test::normal(rng, static_cast<size_t>(2 * H * M), 0.7f);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t m = 0; m < M; ++m) {
        sp.A.push_back(A[static_cast<size_t>(m)]);
        sp.B.emplace_back(1.0, 0.0);
        sp.C.emplace_back(c[static_cast<size_t>(2 * (h * M + m))], c[static_cast<size_t>(2 * (h * M + m) + 1)]);
      }
    for (float u : test::uniform(rng, static_cast<size_t>(H), std::log(1e-3f), std::log(1e-1f))) sp.dt.push_back(std::exp(u));
    ops::H3Params p;
    p.d_model = Dm;
    p.head_dim = dh;
    p.shift_filter = random_tensor(rng, {Dm, Nshift});
    p.shift_D = random_tensor(rng, {Dm});
    p.diag = ops::s4d_discretize_zoh(sp);
    p.diag_D = random_tensor(rng, {H});
    const Tensor q = random_tensor(rng, {B, T, Dm}), k = random_tensor(rng, {B, T, Dm}), v = random_tensor(rng, {B, T, Dm});

    const ref::Vec qd = to_double(q), kd = to_double(k), vd = to_double(v), f = to_double(p.shift_filter);
    const ref::Vec sD = to_double(p.shift_D), dD = to_double(p.diag_D);
    ref::Vec want(static_cast<size_t>(B * T * Dm), 0.0);
    for (int64_t b = 0; b < B; ++b) {
      // k' by the shift SSM's definition: sum of the last N_shift inputs times the taps.
      ref::Vec ks(static_cast<size_t>(T * Dm));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t ch = 0; ch < Dm; ++ch) {
          double acc = sD[ch] * kd[(b * T + t) * Dm + ch];
          for (int64_t j = 0; j < Nshift && j <= t; ++j) acc += f[ch * Nshift + j] * kd[(b * T + t - j) * Dm + ch];
          ks[t * Dm + ch] = acc;
        }
      for (int64_t d1 = 0; d1 < dh; ++d1)
        for (int64_t d2 = 0; d2 < dh; ++d2) {
          ref::Vec kv(static_cast<size_t>(T * H));
          for (int64_t t = 0; t < T; ++t)
            for (int64_t h = 0; h < H; ++h) kv[t * H + h] = ks[t * Dm + h * dh + d1] * vd[(b * T + t) * Dm + h * dh + d2];
          const ref::Vec s = ref::s4d(sp.A, sp.B, sp.C, sp.dt, dD, kv, 1, T, H, M);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t h = 0; h < H; ++h) want[(b * T + t) * Dm + d2 * H + h] += qd[(b * T + t) * Dm + h * dh + d1] * s[t * H + h];
        }
    }
    for (auto method : {ops::LongConvMethod::fft, ops::LongConvMethod::direct}) {
      const Tensor y = test::nan_tensor({B, T, Dm});
      ops::h3_mix(p, q, k, v, y, method);
      // Two f32 convolutions and products of O(1) values: ~1e-5 of outputs up to ~10.
      test::expect_close(y, want, 1e-4, 1e-4, "head_dim " + std::to_string(dh));
    }
  }
}

TEST(H3, RejectsBadArguments) {
  ops::H3Params p;
  p.d_model = 6;
  p.head_dim = 4;
  const Tensor x = Tensor::zeros(DType::f32, {1, 3, 6});
  EXPECT_THROW(ops::h3_mix(p, x, x, x, Tensor::zeros(DType::f32, {1, 3, 6})), Error);
}

}  // namespace
}  // namespace subq
