// Long causal convolution, direct and FFT paths, against the float64 definition: filters
// of 1 tap to longer than the sequence, T = 1 and odd T, channel counts that are not
// multiples of any vector width, batch > 1.
#include <gtest/gtest.h>

#include <cmath>

#include "src/ops/conv/long_conv.h"
#include "tests/reference/conv.h"
#include "tests/support/random.h"
#include "tests/support/targets.h"

namespace subq {
namespace {

using test::expect_close;
using test::nan_tensor;
using test::random_tensor;
using test::rng_for_test;
using test::to_double;

// Outputs are sums of min(L, T) products of O(1) values, so their scale is ~sqrt(taps).
// Direct accumulates in f32 (error ~ taps * eps * scale); the FFT's error is ~eps * log n
// relative to the output norm, so both are bounded by an absolute tolerance on that scale.
double atol_for(int64_t taps) { return 3e-6 * std::sqrt(static_cast<double>(taps)) * std::log2(8.0 * taps); }

TEST(LongConv, DirectAndFftMatchReference) {
  auto rng = rng_for_test();
  struct Size { int64_t B, T, C, L; };
  const Size sizes[] = {{2, 1, 5, 1}, {2, 127, 19, 127}, {1, 300, 33, 40}, {3, 1000, 7, 1000}, {2, 50, 17, 80}, {1, 77, 16, 3}};
  test::for_each_target([&] {
    for (const Size& s : sizes) {
      const Tensor u = random_tensor(rng, {s.B, s.T, s.C});
      const Tensor k = random_tensor(rng, {s.C, s.L});
      const ref::Vec want = [&] {
        // The reference works on rows [B*C, T]; transpose in and out.
        ref::Vec rows(static_cast<size_t>(s.B * s.C * s.T)), ud = to_double(u);
        for (int64_t b = 0; b < s.B; ++b)
          for (int64_t t = 0; t < s.T; ++t)
            for (int64_t c = 0; c < s.C; ++c) rows[static_cast<size_t>((b * s.C + c) * s.T + t)] = ud[static_cast<size_t>((b * s.T + t) * s.C + c)];
        const ref::Vec yr = ref::causal_conv(rows, s.B * s.C, s.T, to_double(k), s.C, s.L);
        ref::Vec out(yr.size());
        for (int64_t b = 0; b < s.B; ++b)
          for (int64_t t = 0; t < s.T; ++t)
            for (int64_t c = 0; c < s.C; ++c) out[static_cast<size_t>((b * s.T + t) * s.C + c)] = yr[static_cast<size_t>((b * s.C + c) * s.T + t)];
        return out;
      }();
      const std::string what = "T=" + std::to_string(s.T) + " C=" + std::to_string(s.C) + " L=" + std::to_string(s.L);
      for (auto m : {ops::LongConvMethod::direct, ops::LongConvMethod::fft, ops::LongConvMethod::automatic}) {
        const Tensor y = nan_tensor({s.B, s.T, s.C});
        ops::causal_long_conv(u, k, y, m);
        expect_close(y, want, 1e-5, atol_for(std::min(s.L, s.T)),
                     what + (m == ops::LongConvMethod::fft ? " fft" : m == ops::LongConvMethod::direct ? " direct" : " auto"));
      }
    }
  });
}

TEST(LongConv, RejectsBadArguments) {
  const Tensor u = Tensor::zeros(DType::f32, {2, 9, 4});
  const Tensor y = Tensor::zeros(DType::f32, {2, 9, 4});
  EXPECT_THROW(ops::causal_long_conv(u, Tensor::zeros(DType::f32, {3, 5}), y), Error);
  EXPECT_THROW(ops::causal_long_conv(u, Tensor::zeros(DType::f32, {4, 0}), y), Error);
  EXPECT_THROW(ops::causal_long_conv(u, Tensor::zeros(DType::f32, {4, 5}), Tensor::zeros(DType::f32, {2, 8, 4})), Error);
  EXPECT_THROW(ops::causal_long_conv(u, Tensor::zeros(DType::f32, {4, 5}), u), Error);
  EXPECT_THROW(ops::causal_long_conv(u.view({18, 4}), Tensor::zeros(DType::f32, {4, 5}), y.view({18, 4})), Error);
}

}  // namespace
}  // namespace subq
