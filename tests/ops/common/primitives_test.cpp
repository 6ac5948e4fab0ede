// Norms, softmax, activations, RoPE, embedding and dtype conversion against float64.
// Sizes are awkward on purpose: 1, 7, 33, 1000 and others that are not multiples of any
// vector width, so vector bodies and scalar tails are both exercised. Every test runs
// under each compiled SIMD target.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "subq/ops.h"
#include "tests/reference/common.h"
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

const int64_t kSizes[] = {1, 7, 33, 1000, 4099};

// f32 kernels accumulate in f32: rows of a few thousand elements stay within ~1e-5.
constexpr double kRtol = 2e-5, kAtol = 1e-6;

TEST(Primitives, RmsNorm) {
  auto rng = rng_for_test();
  for_each_target([&] {
    for (int64_t n : kSizes) {
      const Tensor x = random_tensor(rng, {3, n}, -3, 3), w = random_tensor(rng, {n}, 0.5, 1.5);
      const Tensor y = nan_tensor({3, n});
      rms_norm(x, w, 1e-5f, y);
      expect_close(y, ref::rms_norm(to_double(x), to_double(w), 1e-5, n), kRtol, kAtol, "n=" + std::to_string(n));
      rms_norm(x, w, 1e-5f, x);  // in place
      expect_close(x, to_double(y), 0, 0, "in place");
    }
  });
}

TEST(Primitives, LayerNormWithLargeMean) {
  auto rng = rng_for_test();
  for_each_target([&] {
    for (int64_t n : kSizes) {
      if (n == 1) continue;  // variance 0: the output is just the bias
      const Tensor x = random_tensor(rng, {2, n}, 99, 101);
      const Tensor w = random_tensor(rng, {n}), b = random_tensor(rng, {n});
      const Tensor y = nan_tensor({2, n});
      layer_norm(x, w, b, 1e-5f, y);
      const auto bd = to_double(b);
      // Mean 100 with unit spread costs ~2 digits in f32 centring.
      expect_close(y, ref::layer_norm(to_double(x), to_double(w), &bd, 1e-5, n), 1e-3, 1e-4,
                   "n=" + std::to_string(n));
      const Tensor y2 = nan_tensor({2, n});
      layer_norm(x, w, Tensor(), 1e-5f, y2);
      expect_close(y2, ref::layer_norm(to_double(x), to_double(w), nullptr, 1e-5, n), 1e-3, 1e-4, "no bias");
    }
  });
}

TEST(Primitives, SoftmaxIsStableForLargeLogits) {
  auto rng = rng_for_test();
  for_each_target([&] {
    for (int64_t n : kSizes) {
      const Tensor x = random_tensor(rng, {4, n}, -80, 80);
      const Tensor y = nan_tensor({4, n});
      softmax(x, y);
      expect_close(y, ref::softmax(to_double(x), n), 1e-5, 1e-7, "n=" + std::to_string(n));
    }
  });
}

TEST(Primitives, Activations) {
  auto rng = rng_for_test();
  for_each_target([&] {
    for (int64_t n : kSizes) {
      const Tensor x = random_tensor(rng, {n}, -30, 30);
      const auto xd = to_double(x);
      std::vector<double> want_silu(xd.size()), want_sp(xd.size()), want_exp(xd.size());
      for (size_t i = 0; i < xd.size(); ++i) {
        want_silu[i] = ref::silu(xd[i]);
        want_sp[i] = ref::softplus(xd[i]);
        want_exp[i] = std::exp(xd[i]);
      }
      Tensor y = nan_tensor({n});
      silu(x, y);
      expect_close(y, want_silu, 1e-5, 1e-30, "silu");
      y = nan_tensor({n});
      softplus(x, y);
      expect_close(y, want_sp, 1e-5, 1e-30, "softplus");
      y = nan_tensor({n});
      exp(x, y);
      expect_close(y, want_exp, 1e-5, 1e-30, "exp");
    }
  });
}

TEST(Primitives, SoftplusDoesNotOverflow) {
  const Tensor x = test::tensor_from({-200.f, -20.f, 0.f, 20.f, 200.f}, {5});
  const Tensor y = nan_tensor({5});
  softplus(x, y);
  expect_close(y, {std::log1p(std::exp(-200.0)), std::log1p(std::exp(-20.0)), std::log(2.0), 20.0 + std::log1p(std::exp(-20.0)), 200.0},
               1e-5, 1e-30, "softplus extremes");
}

TEST(Primitives, Rope) {
  auto rng = rng_for_test();
  for (int64_t Dh : {32, 80, 128}) {
    for (int64_t rot : {Dh, Dh / 2}) {
      const int64_t T = 37, H = 3;
      Tensor x = random_tensor(rng, {T, H, Dh});
      const auto xd = to_double(x);
      std::vector<int32_t> pos(T);
      Tensor p = Tensor::empty(DType::i32, {T});
      for (int64_t t = 0; t < T; ++t) pos[t] = p.mutable_data<int32_t>()[t] = static_cast<int32_t>(t * 997 + 3);
      rope(x, p, 10000.f, rot);
      // Angles up to ~36000 rad: f32 sin/cos of an exactly reduced double angle.
      expect_close(x, ref::rope(xd, pos, H, Dh, 10000.0, rot), 1e-5, 1e-5, "Dh=" + std::to_string(Dh));
    }
  }
  Tensor x = Tensor::zeros(DType::f32, {2, 1, 8});
  Tensor p = Tensor::zeros(DType::i32, {2});
  EXPECT_THROW(rope(x, p, 10000.f, 7), Error);
  EXPECT_THROW(rope(x, p, 10000.f, 10), Error);
  EXPECT_THROW(rope(x, Tensor::zeros(DType::i32, {3}), 10000.f, 8), Error);
}

TEST(Primitives, EmbeddingAllDtypesAndBadIds) {
  auto rng = rng_for_test();
  const int64_t V = 50, D = 33;
  const Tensor table = random_tensor(rng, {V, D});
  Tensor ids = Tensor::empty(DType::i32, {7});
  std::uniform_int_distribution<int32_t> pick(0, V - 1);
  for (int64_t t = 0; t < 7; ++t) ids.mutable_data<int32_t>()[t] = pick(rng);
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    Tensor tab = Tensor::empty(dt, {V, D});
    convert(table, tab);
    const auto td = to_double(tab);
    const Tensor out = nan_tensor({7, D});
    embedding(ids, tab, out);
    std::vector<double> want;
    for (int64_t t = 0; t < 7; ++t)
      for (int64_t d = 0; d < D; ++d) want.push_back(td[ids.data<int32_t>()[t] * D + d]);
    expect_close(out, want, 0, 0, dtype_name(dt));
  }
  ids.mutable_data<int32_t>()[3] = V;
  EXPECT_THROW(embedding(ids, table, nan_tensor({7, D})), Error);
  ids.mutable_data<int32_t>()[3] = -1;
  EXPECT_THROW(embedding(ids, table, nan_tensor({7, D})), Error);
}

// Round to nearest even, reference in integer arithmetic on the f32 bits.
uint16_t bf16_rne(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((b >> 16) | 0x40);
  const uint32_t lower = b & 0xFFFF, upper = b >> 16;
  if (lower > 0x8000 || (lower == 0x8000 && (upper & 1))) return static_cast<uint16_t>(upper + 1);
  return static_cast<uint16_t>(upper);
}

TEST(Conversion, Bf16RoundsToNearestEven) {
  auto rng = rng_for_test();
  for_each_target([&] {
    for (int64_t n : kSizes) {
      std::vector<float> v = test::normal(rng, static_cast<size_t>(n), 100.f);
      if (n >= 7) {  // ties, NaN, infinities, denormals
        uint32_t tie = 0x3F808000u, tie_odd = 0x3F818000u;
        std::memcpy(&v[0], &tie, 4);
        std::memcpy(&v[1], &tie_odd, 4);
        v[2] = NAN;
        v[3] = INFINITY;
        v[4] = -INFINITY;
        v[5] = 1e-40f;
        v[6] = 3.3895314e38f;  // rounds up to Inf in bf16
      }
      const Tensor src = test::tensor_from(v, {n});
      Tensor dst = Tensor::empty(DType::bf16, {n});
      convert(src, dst);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t got = dst.data<bf16>()[i].bits;
        ASSERT_EQ(got, bf16_rne(v[i])) << "i=" << i << " v=" << v[i];
      }
      Tensor back = nan_tensor({n});
      convert(dst, back);
      for (int64_t i = 0; i < n; ++i) {
        uint32_t want = static_cast<uint32_t>(bf16_rne(v[i])) << 16;
        uint32_t got;
        std::memcpy(&got, back.data<float>() + i, 4);
        ASSERT_EQ(got, want) << "i=" << i;
      }
    }
  });
}

TEST(Conversion, F16RoundTripAndRounding) {
  auto rng = rng_for_test();
  for_each_target([&] {
    for (int64_t n : kSizes) {
      const Tensor src = random_tensor(rng, {n}, -60000, 60000);
      Tensor h = Tensor::empty(DType::f16, {n});
      convert(src, h);
      Tensor back = nan_tensor({n});
      convert(h, back);
      const auto s = to_double(src);
      // f16 has an 11-bit significand: relative error at most 2^-11 after rounding.
      expect_close(back, s, std::ldexp(1.0, -11), 0, "f16 round trip");
      // Exactly representable values survive unchanged.
      const Tensor exact = test::tensor_from({0.5f, -2.f, 1024.f, 0.000061035156f, 65504.f}, {5});
      Tensor e16 = Tensor::empty(DType::f16, {5});
      convert(exact, e16);
      Tensor eback = nan_tensor({5});
      convert(e16, eback);
      expect_close(eback, to_double(exact), 0, 0, "f16 exact");
    }
  });
}

TEST(Conversion, RejectsMismatchedShapes) {
  EXPECT_THROW(convert(Tensor::zeros(DType::f32, {4}), Tensor::empty(DType::bf16, {5})), Error);
  EXPECT_THROW(convert(Tensor::zeros(DType::f32, {4}), Tensor::empty(DType::i32, {4})), Error);
}

TEST(Primitives, ArgumentErrorsNameTheArgument) {
  const Tensor x = Tensor::zeros(DType::f32, {2, 8});
  try {
    rms_norm(x, Tensor::zeros(DType::f32, {7}), 1e-5f, nan_tensor({2, 8}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rms_norm: weight"), std::string::npos) << e.what();
  }
  EXPECT_THROW(softmax(x, nan_tensor({2, 9})), Error);
  EXPECT_THROW(silu(Tensor::zeros(DType::bf16, {3}), nan_tensor({3})), Error);
}

}  // namespace
}  // namespace subq
