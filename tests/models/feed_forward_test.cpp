#include "src/models/feed_forward.h"

#include <gtest/gtest.h>

#include "tests/reference/mlp.h"
#include "tests/support/random.h"

namespace subq {
namespace {

using test::nan_tensor;
using test::random_tensor;
using test::to_double;

// f32 products over a few hundred terms: relative error ~1e-6; 1e-4 leaves margin.
constexpr double kRtol = 1e-4, kAtol = 1e-5;

TEST(FeedForward, GatedAndPlainMatchFloat64) {
  auto rng = test::rng_for_test();
  const int64_t T = 13, D = 37, F = 53;
  const Tensor x = random_tensor(rng, {T, D}, -2, 2);
  const Tensor gate = random_tensor(rng, {F, D}, -0.3f, 0.3f), up = random_tensor(rng, {F, D}, -0.3f, 0.3f);
  const Tensor down = random_tensor(rng, {D, F}, -0.3f, 0.3f);
  const auto xd = to_double(x);
  for (auto [act, kind] : {std::pair{Activation::silu, 0}, {Activation::gelu_tanh, 1}, {Activation::relu2, 2}}) {
    auto mlp = make_gated_mlp({gate, up, down}, act);
    Tensor y = nan_tensor({T, D});
    mlp->forward(x, y);
    test::expect_close(y, ref::gated_mlp(xd, to_double(gate), to_double(up), to_double(down), T, D, F, kind), kRtol,
                       kAtol, "gated");
    auto plain = make_plain_mlp(up, down, act);
    y = nan_tensor({T, D});
    plain->forward(x, y);
    test::expect_close(y, ref::plain_mlp(xd, to_double(up), to_double(down), T, D, F, kind), kRtol, kAtol, "plain");
  }
}

TEST(FeedForward, MoeMatchesFloat64TopK) {
  auto rng = test::rng_for_test();
  const int64_t T = 11, D = 24, F = 40, E = 5;
  const Tensor x = random_tensor(rng, {T, D}, -2, 2);
  const Tensor router = random_tensor(rng, {E, D}, -1, 1);
  std::vector<GatedWeights> experts;
  for (int64_t e = 0; e < E; ++e)
    experts.push_back({random_tensor(rng, {F, D}, -0.3f, 0.3f), random_tensor(rng, {F, D}, -0.3f, 0.3f),
                       random_tensor(rng, {D, F}, -0.3f, 0.3f)});
  const auto xd = to_double(x);
  for (bool normalize : {false, true}) {
    auto moe = make_moe(router, experts, 2, normalize, Activation::silu);
    Tensor y = nan_tensor({T, D});
    moe->forward(x, y);
    // Reference: softmax over router logits, top-2, (optionally renormalised) weighted sum.
    const auto logits = ref::matmul_t(xd, to_double(router), T, E, D);
    std::vector<double> want(static_cast<size_t>(T * D), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> p(logits.begin() + t * E, logits.begin() + (t + 1) * E);
      const double mx = *std::max_element(p.begin(), p.end());
      double s = 0;
      for (double& v : p) s += (v = std::exp(v - mx));
      for (double& v : p) v /= s;
      std::vector<int64_t> idx(static_cast<size_t>(E));
      std::iota(idx.begin(), idx.end(), 0);
      std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
      const double norm = normalize ? p[idx[0]] + p[idx[1]] : 1.0;
      std::vector<double> xt(xd.begin() + t * D, xd.begin() + (t + 1) * D);
      for (int k = 0; k < 2; ++k) {
        const auto& ew = experts[static_cast<size_t>(idx[k])];
        const auto out = ref::gated_mlp(xt, to_double(ew.gate), to_double(ew.up), to_double(ew.down), 1, D, F, 0);
        for (int64_t d = 0; d < D; ++d) want[t * D + d] += p[idx[k]] / norm * out[d];
      }
    }
    test::expect_close(y, want, kRtol, kAtol, normalize ? "moe normalised" : "moe");
  }
  EXPECT_THROW(make_moe(router, experts, 6, false, Activation::silu), Error);
  experts.pop_back();
  EXPECT_THROW(make_moe(router, experts, 2, false, Activation::silu), Error);
}

TEST(FeedForward, RejectsBadShapesAndActivations) {
  EXPECT_THROW(parse_activation("tanhshrink"), Error);
  EXPECT_EQ(parse_activation("swish"), Activation::silu);
  const Tensor g = Tensor::zeros(DType::f32, {8, 4});
  EXPECT_THROW(make_gated_mlp({g, g, Tensor::zeros(DType::f32, {8, 4})}, Activation::silu), Error);
  auto mlp = make_gated_mlp({g, g, Tensor::zeros(DType::f32, {4, 8})}, Activation::silu);
  EXPECT_THROW(mlp->forward(Tensor::zeros(DType::f32, {2, 5}), nan_tensor({2, 5})), Error);
}

}  // namespace
}  // namespace subq
