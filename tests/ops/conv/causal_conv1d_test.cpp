// Causal depthwise conv1d against the float64 reference: every width 2..8, bias on/off,
// SiLU on/off, D not a multiple of any vector width, T = 1 and odd T, batch > 1, and the
// decode form chained token by token. Every test runs under each compiled SIMD target.
#include <gtest/gtest.h>

#include "src/ops/conv/causal_conv1d.h"
#include "tests/reference/conv.h"
#include "tests/support/random.h"
#include "tests/support/targets.h"

namespace subq {
namespace {

using test::expect_close;
using test::for_each_target;
using test::nan_tensor;
using test::random_tensor;
using test::rng_for_test;
using test::to_double;

// At most 8 f32 products per output: ~1e-6 relative; SiLU's vector exp adds ~1 ulp.
constexpr double kRtol = 1e-5, kAtol = 1e-6;

TEST(CausalConv1d, MatchesReferenceAllWidths) {
  auto rng = rng_for_test();
  for_each_target([&] {
    for (int W = 2; W <= 8; ++W) {
      for (const auto& [B, T, D] : {std::tuple<int64_t, int64_t, int64_t>{2, 1, 5}, {3, 131, 37}, {1, 7, 16}}) {
        const bool bias_on = (W % 2) == 0, silu_on = W != 3;
        const Tensor x = random_tensor(rng, {B, T, D}, -2, 2);
        const Tensor w = random_tensor(rng, {D, 1, W});
        const Tensor bias = bias_on ? random_tensor(rng, {D}) : Tensor();
        const Tensor y = nan_tensor({B, T, D});
        ops::causal_conv1d(x, w, bias, Tensor(), silu_on, y);
        expect_close(y, ref::causal_conv1d(to_double(x), B, T, D, to_double(w), W, bias_on ? to_double(bias) : ref::Vec{}, {}, silu_on),
                     kRtol, kAtol, "W=" + std::to_string(W) + " T=" + std::to_string(T) + " D=" + std::to_string(D));
      }
    }
  });
}

// x read in place as a column slice of a wider projection (Mamba-2's xBC inside in_proj).
TEST(CausalConv1d, ReadsASliceOfAWiderTensor) {
  auto rng = rng_for_test();
  const int64_t B = 2, T = 19, D = 23, W = 4;
  const Tensor wide = random_tensor(rng, {B, T, D + 11}, -2, 2);
  const Tensor x = wide.slice(2, 5, 5 + D);
  ASSERT_FALSE(x.is_contiguous());
  const Tensor w = random_tensor(rng, {D, W}), bias = random_tensor(rng, {D});
  const Tensor y = nan_tensor({B, T, D});
  ops::causal_conv1d(x, w, bias, Tensor(), true, y);
  expect_close(y, ref::causal_conv1d(to_double(x), B, T, D, to_double(w), W, to_double(bias), {}, true), kRtol, kAtol,
               "sliced x");
}

// A state carried across pieces (prefill 1, then pieces shorter and longer than W-1, then
// token-by-token decode) equals one pass over the whole sequence.
TEST(CausalConv1d, StateCarriesAcrossPiecesAndDecode) {
  auto rng = rng_for_test();
  for_each_target([&] {
    for (int W : {2, 4, 8}) {
      const int64_t B = 3, T = 150, D = 19;
      const Tensor x = random_tensor(rng, {B, T, D}, -2, 2);
      const Tensor w = random_tensor(rng, {D, W});
      const Tensor bias = random_tensor(rng, {D});
      // A non-zero starting window, as after an earlier prompt.
      const Tensor state = random_tensor(rng, {B, W - 1, D});
      const ref::Vec want = ref::causal_conv1d(to_double(x), B, T, D, to_double(w), W, to_double(bias), to_double(state), true);
      std::vector<double> got(static_cast<size_t>(B * T * D));
      int64_t t0 = 0;
      for (int64_t len : {int64_t{1}, int64_t{2}, int64_t{W + 3}, int64_t{70}}) {
        const Tensor xs = x.slice(1, t0, t0 + len).contiguous();
        const Tensor ys = nan_tensor({B, len, D});
        ops::causal_conv1d(xs, w, bias, state, true, ys);
        const auto part = to_double(ys);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t i = 0; i < len * D; ++i) got[static_cast<size_t>((b * T + t0) * D + i)] = part[static_cast<size_t>(b * len * D + i)];
        t0 += len;
      }
      for (; t0 < T; ++t0) {
        const Tensor xs = x.slice(1, t0, t0 + 1).contiguous().view({B, D});
        const Tensor ys = nan_tensor({B, D});
        ops::causal_conv1d_step(xs, w, bias, state, true, ys);
        const auto part = to_double(ys);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t d = 0; d < D; ++d) got[static_cast<size_t>((b * T + t0) * D + d)] = part[static_cast<size_t>(b * D + d)];
      }
      expect_close(got, want, kRtol, kAtol, "W=" + std::to_string(W));
      // The final window holds the last W-1 inputs.
      std::vector<double> last;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t s = T - (W - 1); s < T; ++s)
          for (int64_t d = 0; d < D; ++d) last.push_back(to_double(x)[static_cast<size_t>((b * T + s) * D + d)]);
      expect_close(state, last, 0, 0, "final window");
    }
  });
}

TEST(CausalConv1d, RejectsBadArguments) {
  const Tensor x = Tensor::zeros(DType::f32, {2, 5, 8});
  const Tensor y = Tensor::zeros(DType::f32, {2, 5, 8});
  EXPECT_THROW(ops::causal_conv1d(x, Tensor::zeros(DType::f32, {8, 9}), Tensor(), Tensor(), false, y), Error);
  EXPECT_THROW(ops::causal_conv1d(x, Tensor::zeros(DType::f32, {8, 1}), Tensor(), Tensor(), false, y), Error);
  EXPECT_THROW(ops::causal_conv1d(x, Tensor::zeros(DType::f32, {7, 4}), Tensor(), Tensor(), false, y), Error);
  EXPECT_THROW(ops::causal_conv1d(x, Tensor::zeros(DType::bf16, {8, 4}), Tensor(), Tensor(), false, y), Error);
  EXPECT_THROW(ops::causal_conv1d(x, Tensor::zeros(DType::f32, {8, 4}), Tensor::zeros(DType::f32, {7}), Tensor(), false, y), Error);
  EXPECT_THROW(ops::causal_conv1d(x, Tensor::zeros(DType::f32, {8, 4}), Tensor(), Tensor::zeros(DType::f32, {2, 4, 8}), false, y), Error);
  EXPECT_THROW(ops::causal_conv1d(x, Tensor::zeros(DType::f32, {8, 4}), Tensor(), Tensor(), false, Tensor::zeros(DType::f32, {2, 4, 8})), Error);
  EXPECT_THROW(ops::causal_conv1d_step(x.select(1, 0).contiguous(), Tensor::zeros(DType::f32, {8, 4}), Tensor(), Tensor(), false,
                                       Tensor::zeros(DType::f32, {2, 8})), Error);
}

}  // namespace
}  // namespace subq
