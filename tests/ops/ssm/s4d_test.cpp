// S4D / diagonal S4: the three initialisations, and the three computations (recurrence,
// materialised kernel + FFT or direct convolution, token-by-token decode) against the
// float64 recurrence and against each other. Channels are not a multiple of any vector
// width; T = 1, odd T and batch > 1 are covered.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "src/ops/ssm/s4d.h"
#include "tests/reference/ssm.h"
#include "tests/support/random.h"
#include "tests/support/targets.h"

namespace subq {
namespace {

using test::expect_close;
using test::random_tensor;
using test::rng_for_test;
using test::to_double;

TEST(S4D, LinAndInvInitFollowThePaper) {
  const auto lin = ops::s4d_init_A(8, ops::S4DInit::lin);
  ASSERT_EQ(lin.size(), 4u);
  for (size_t m = 0; m < 4; ++m) {
    EXPECT_EQ(lin[m].real(), -0.5);
    EXPECT_NEAR(lin[m].imag(), std::numbers::pi * static_cast<double>(m), 1e-12);
  }
  const auto inv = ops::s4d_init_A(8, ops::S4DInit::inv);
  EXPECT_NEAR(inv[0].imag(), 8 / std::numbers::pi * 7, 1e-12);       // N/pi (N/1 - 1)
  EXPECT_NEAR(inv[3].imag(), 8 / std::numbers::pi * (8.0 / 7 - 1), 1e-12);
  EXPECT_THROW(ops::s4d_init_A(7, ops::S4DInit::lin), Error);
}

// LegS: for N = 2 the skew part is [[0, s], [-s, 0]] with s = sqrt(3)/2, eigenvalues +-i s.
// For larger N the eigenvalues must reproduce the traces of S^2 and S^4 (sum of w^2 and
// w^4 over all 2M eigenvalues +-i w).
TEST(S4D, LegsInitIsTheSpectrumOfHippoLegs) {
  const auto two = ops::s4d_init_A(2, ops::S4DInit::legs);
  ASSERT_EQ(two.size(), 1u);
  EXPECT_NEAR(two[0].imag(), std::sqrt(3.0) / 2, 1e-12);
  EXPECT_EQ(two[0].real(), -0.5);
  for (int64_t N : {16, 64}) {
    const auto A = ops::s4d_init_A(N, ops::S4DInit::legs);
    ASSERT_EQ(static_cast<int64_t>(A.size()), N / 2);
    std::vector<double> S(static_cast<size_t>(N * N), 0.0);
    for (int64_t r = 0; r < N; ++r)
      for (int64_t c = 0; c < N; ++c)
        if (r != c) S[static_cast<size_t>(r * N + c)] = (r > c ? -0.5 : 0.5) * std::sqrt((2.0 * r + 1) * (2.0 * c + 1));
    std::vector<double> S2(static_cast<size_t>(N * N), 0.0);
    for (int64_t r = 0; r < N; ++r)
      for (int64_t c = 0; c < N; ++c)
        for (int64_t k = 0; k < N; ++k) S2[static_cast<size_t>(r * N + c)] += S[static_cast<size_t>(r * N + k)] * S[static_cast<size_t>(k * N + c)];
    double tr2 = 0, tr4 = 0;
    for (int64_t r = 0; r < N; ++r) {
      tr2 += S2[static_cast<size_t>(r * N + r)];
      for (int64_t k = 0; k < N; ++k) tr4 += S2[static_cast<size_t>(r * N + k)] * S2[static_cast<size_t>(k * N + r)];
    }
    double w2 = 0, w4 = 0;
    for (const auto& a : A) {
      EXPECT_EQ(a.real(), -0.5);
      w2 += 2 * a.imag() * a.imag();
      w4 += 2 * std::pow(a.imag(), 4);
    }
    EXPECT_NEAR(w2, -tr2, 1e-9 * std::abs(tr2)) << "N=" << N;
    EXPECT_NEAR(w4, tr4, 1e-9 * tr4) << "N=" << N;
  }
}

struct Layer {
  int64_t H, M;
  ops::S4DParams p;
  ops::S4DDiscrete s;
  std::vector<float> D;
};

// S4D's defaults: B = 1, C ~ N(0, 1/2) complex, log dt ~ U(log 1e-3, log 1e-1).
Layer make_layer(std::mt19937_64& rng, int64_t H, int64_t N, ops::S4DInit init) {
  Layer l{H, N / 2, {}, {}, {}};
  const auto A = ops::s4d_init_A(N, init);
  l.p.channels = H;
  l.p.modes = N / 2;
  const auto cr = test::normal(rng, static_cast<size_t>(H * l.M), 0.7f), ci = test::normal(rng, static_cast<size_t>(H * l.M), 0.7f);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t m = 0; m < l.M; ++m) {
      l.p.A.push_back(A[static_cast<size_t>(m)]);
      l.p.B.emplace_back(1.0, 0.0);
      l.p.C.emplace_back(cr[static_cast<size_t>(h * l.M + m)], ci[static_cast<size_t>(h * l.M + m)]);
    }
  for (float v : test::uniform(rng, static_cast<size_t>(H), std::log(1e-3f), std::log(1e-1f))) l.p.dt.push_back(std::exp(v));
  l.s = ops::s4d_discretize_zoh(l.p);
  l.D = test::uniform(rng, static_cast<size_t>(H));
  return l;
}

// f32 recurrence: the state sums up to ~1/(1 - |dA|) ~ 2000 steps of O(dt) terms, so
// outputs are O(1..10) with f32 rounding ~1e-6 relative; kernels are computed in double.
constexpr double kRtol = 1e-4, kAtol = 1e-4;

TEST(S4D, RecurrenceConvolutionAndDecodeAgree) {
  auto rng = rng_for_test();
  test::for_each_target([&] {
    for (auto init : {ops::S4DInit::lin, ops::S4DInit::inv, ops::S4DInit::legs}) {
      for (const auto& [B, T, H, N] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{2, 1, 3, 2}, {2, 301, 19, 16}, {1, 129, 33, 64}}) {
        const Layer l = make_layer(rng, H, N, init);
        const Tensor u = random_tensor(rng, {B, T, H});
        const ref::Vec want = ref::s4d(l.p.A, l.p.B, l.p.C, l.p.dt, {l.D.begin(), l.D.end()}, to_double(u), B, T, H, l.M);
        const std::string what = "init " + std::to_string(static_cast<int>(init)) + " T=" + std::to_string(T) + " H=" + std::to_string(H) + " N=" + std::to_string(N);

        std::vector<float> state(static_cast<size_t>(B * H * l.M * 2), 0.f), y(static_cast<size_t>(B * T * H), NAN);
        ops::s4d_scan(l.s, B, T, u.data<float>(), l.D.data(), state.data(), y.data());
        expect_close({y.begin(), y.end()}, want, kRtol, kAtol, what + " recurrence");

        for (auto method : {ops::LongConvMethod::fft, ops::LongConvMethod::direct}) {
          std::vector<float> yc(static_cast<size_t>(B * T * H), NAN);
          ops::s4d_conv(l.s, B, T, u.data<float>(), l.D.data(), yc.data(), method);
          expect_close({yc.begin(), yc.end()}, want, kRtol, kAtol, what + (method == ops::LongConvMethod::fft ? " fft conv" : " direct conv"));
        }

        // Decode: one token at a time through the same state.
        std::vector<float> sd(state.size(), 0.f), yd(y.size(), NAN), ut(static_cast<size_t>(B * H)), yt(static_cast<size_t>(B * H));
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t b = 0; b < B; ++b)
            for (int64_t h = 0; h < H; ++h) ut[static_cast<size_t>(b * H + h)] = u.data<float>()[(b * T + t) * H + h];
          ops::s4d_scan(l.s, B, 1, ut.data(), l.D.data(), sd.data(), yt.data());
          for (int64_t b = 0; b < B; ++b)
            for (int64_t h = 0; h < H; ++h) yd[static_cast<size_t>((b * T + t) * H + h)] = yt[static_cast<size_t>(b * H + h)];
        }
        expect_close({yd.begin(), yd.end()}, {y.begin(), y.end()}, 0, 0, what + " decode vs recurrence");
        expect_close({sd.begin(), sd.end()}, {state.begin(), state.end()}, 0, 0, what + " decode state");
      }
    }
  });
}

TEST(S4D, KernelMatchesClosedForm) {
  auto rng = rng_for_test();
  const Layer l = make_layer(rng, 5, 32, ops::S4DInit::inv);
  const int64_t L = 3000;
  std::vector<float> K(static_cast<size_t>(5 * L), NAN);
  ops::s4d_kernel(l.s, L, K.data());
  // The reference uses exact double parameters; the kernel uses dA, dB, C rounded to f32
  // (~6e-8 relative, which grows ~l times in the phase of dA^l: ~2e-4 at l = 3000) and f32
  // steps between double anchors 64 steps apart.
  expect_close({K.begin(), K.end()}, ref::s4d_kernel(l.p.A, l.p.B, l.p.C, l.p.dt, 5, 16, L), 1e-3, 2e-4, "kernel");
}

TEST(S4D, RejectsBadParameters) {
  ops::S4DParams p;
  p.channels = 2;
  p.modes = 1;
  p.A = {{-0.5, 1}, {-0.5, 2}};
  p.B = {{1, 0}, {1, 0}};
  p.C = {{1, 0}};
  p.dt = {0.1, 0.1};
  EXPECT_THROW(ops::s4d_discretize_zoh(p), Error);
  p.C.emplace_back(1, 0);
  p.dt[1] = 0;
  EXPECT_THROW(ops::s4d_discretize_zoh(p), Error);
  p.dt[1] = 0.1;
  ops::S4DDiscrete s = ops::s4d_discretize_zoh(p);
  s.dB.pop_back();
  float u = 1, y = 0, st[4] = {};
  EXPECT_THROW(ops::s4d_scan(s, 1, 1, &u, nullptr, st, &y), Error);
}

}  // namespace
}  // namespace subq
