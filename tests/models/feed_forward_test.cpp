#include "src/models/feed_forward.h"

#include <gtest/gtest.h>

#include <array>
#include <string>

#include "tests/reference/mlp.h"
#include "tests/support/random.h"

namespace subq {
namespace {

using test::nan_tensor;
using test::random_tensor;
using test::to_double;

// f32 products over a few hundred terms: relative error ~1e-6; 1e-4 leaves margin.
constexpr double kRtol = 1e-4, kAtol = 1e-5;

// 13 tokens run the activations on the caller; 300 x 233 activations split over the pool.
TEST(FeedForward, GatedAndPlainMatchFloat64) {
  auto rng = test::rng_for_test();
  for (const auto [T, D, F] : {std::array<int64_t, 3>{13, 37, 53}, std::array<int64_t, 3>{300, 37, 233}}) {
    const Tensor x = random_tensor(rng, {T, D}, -2, 2);
    const Tensor gate = random_tensor(rng, {F, D}, -0.3f, 0.3f), up = random_tensor(rng, {F, D}, -0.3f, 0.3f);
    const Tensor down = random_tensor(rng, {D, F}, -0.3f, 0.3f);
    const auto xd = to_double(x);
    for (auto [act, kind] : {std::pair{Activation::silu, 0}, {Activation::gelu_tanh, 1}, {Activation::relu2, 2}}) {
      auto mlp = make_gated_mlp({gate, up, down}, act);
      Tensor y = nan_tensor({T, D});
      mlp->forward(x, y);
      test::expect_close(y, ref::gated_mlp(xd, to_double(gate), to_double(up), to_double(down), T, D, F, kind), kRtol,
                         kAtol, "gated T=" + std::to_string(T));
      auto plain = make_plain_mlp(up, down, act);
      y = nan_tensor({T, D});
      plain->forward(x, y);
      test::expect_close(y, ref::plain_mlp(xd, to_double(up), to_double(down), T, D, F, kind), kRtol, kAtol,
                         "plain T=" + std::to_string(T));
    }
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

// Whether f32 rounding could change the experts chosen for one token: any two of its
// choice values, or of its group scores, within 1e-3 of each other.
bool near_tie(const std::vector<double>& logits, const std::vector<double>& bias, int64_t n_group) {
  const int64_t E = static_cast<int64_t>(logits.size()), G = E / n_group;
  std::vector<double> choice, group_score;
  for (int64_t e = 0; e < E; ++e) choice.push_back(1 / (1 + std::exp(-logits[e])) + bias[e]);
  for (int64_t g = 0; g < n_group; ++g) {
    std::vector<double> c(choice.begin() + g * G, choice.begin() + (g + 1) * G);
    std::sort(c.rbegin(), c.rend());
    group_score.push_back(c[0] + c[1]);
  }
  for (const auto* v : {&choice, &group_score})
    for (size_t i = 0; i < v->size(); ++i)
      for (size_t j = 0; j < i; ++j)
        if (std::abs((*v)[i] - (*v)[j]) < 1e-3) return true;
  return false;
}

TEST(FeedForward, GroupLimitedMoeMatchesFloat64) {
  auto rng = test::rng_for_test();
  const int64_t T = 13, D = 29, I = 23, S = 31, E = 12;
  struct Case {
    int64_t n_group, topk_group, top_k, latent;  // latent 0: the experts work at width D
    bool normalize;
    float scale;
  };
  for (const Case c : {Case{3, 2, 3, 19, true, 2.5f}, Case{4, 3, 5, 0, false, 1.f}, Case{1, 1, 2, 0, true, 1.f},
                       Case{6, 2, 3, 17, false, 0.5f}, Case{2, 1, 6, 0, true, 1.5f}}) {
    SCOPED_TRACE("n_group " + std::to_string(c.n_group) + ", topk_group " + std::to_string(c.topk_group) + ", top_k " +
                 std::to_string(c.top_k) + ", latent " + std::to_string(c.latent) +
                 (c.normalize ? ", normalised" : ""));
    const int64_t L = c.latent ? c.latent : D;
    GroupLimitedRouter r;
    r.weight = random_tensor(rng, {E, D}, -0.4f, 0.4f);
    r.correction_bias = random_tensor(rng, {E}, -0.3f, 0.3f);
    r.num_experts_per_tok = c.top_k;
    r.n_group = c.n_group;
    r.topk_group = c.topk_group;
    r.norm_topk_prob = c.normalize;
    r.routed_scaling_factor = c.scale;
    std::vector<Tensor> up, down;
    std::vector<std::unique_ptr<FeedForward>> experts;
    for (int64_t e = 0; e < E; ++e) {
      up.push_back(random_tensor(rng, {I, L}, -0.3f, 0.3f));
      down.push_back(random_tensor(rng, {L, I}, -0.3f, 0.3f));
      experts.push_back(make_plain_mlp(up.back(), down.back(), Activation::relu2));
    }
    Tensor latent_in, latent_out;
    if (c.latent)
      latent_in = random_tensor(rng, {L, D}, -0.3f, 0.3f), latent_out = random_tensor(rng, {D, L}, -0.3f, 0.3f);
    const Tensor shared_up = random_tensor(rng, {S, D}, -0.3f, 0.3f),
                 shared_down = random_tensor(rng, {D, S}, -0.3f, 0.3f);
    auto moe = make_group_limited_moe(r, std::move(experts), latent_in, latent_out,
                                      make_plain_mlp(shared_up, shared_down, Activation::relu2));

    const auto w = to_double(r.weight), bias = to_double(r.correction_bias);
    std::vector<float> xs;
    for (int64_t t = 0; t < T; ++t) {
      std::vector<float> row;
      do row = test::uniform(rng, static_cast<size_t>(D), -2, 2);
      while (near_tie(ref::matmul_t(std::vector<double>(row.begin(), row.end()), w, 1, E, D), bias, c.n_group));
      xs.insert(xs.end(), row.begin(), row.end());
    }
    const Tensor x = test::tensor_from(xs, {T, D});
    Tensor y = nan_tensor({T, D});
    moe->forward(x, y);

    const auto xd = to_double(x), logits = ref::matmul_t(xd, w, T, E, D);
    std::vector<double> want;
    for (int64_t t = 0; t < T; ++t) {
      const std::vector<double> xt(xd.begin() + t * D, xd.begin() + (t + 1) * D);
      const auto h = c.latent ? ref::matmul_t(xt, to_double(latent_in), 1, L, D) : xt;
      std::vector<double> routed(static_cast<size_t>(L), 0.0);
      const auto routes =
          ref::group_limited_routes(std::vector<double>(logits.begin() + t * E, logits.begin() + (t + 1) * E), bias,
                                    c.n_group, c.topk_group, c.top_k, c.normalize, c.scale);
      for (const auto& [e, weight] : routes) {
        const auto out = ref::plain_mlp(h, to_double(up[e]), to_double(down[e]), 1, L, I, 2);
        for (int64_t d = 0; d < L; ++d) routed[d] += weight * out[d];
      }
      auto yt = c.latent ? ref::matmul_t(routed, to_double(latent_out), 1, D, L) : routed;
      const auto shared = ref::plain_mlp(xt, to_double(shared_up), to_double(shared_down), 1, D, S, 2);
      for (int64_t d = 0; d < D; ++d) want.push_back(yt[d] + shared[d]);
    }
    test::expect_close(y, want, kRtol, kAtol, "group-limited moe");
  }
}

// Exact ties go to the lower expert index, in both rules and at every stage of the
// group-limited one (experts within a group, groups, the final choice); weights as
// defined: softmax probabilities, or sigmoid scores normalised and scaled.
TEST(FeedForward, RoutesBreakTiesTowardTheLowerExpert) {
  const auto routes_of = [](const RouteRule& rule, const std::vector<float>& logits) {
    const Routes routes = route_tokens(rule, test::tensor_from(logits, {1, rule.experts}));
    std::vector<std::pair<int64_t, double>> chosen;
    for (size_t e = 0; e < routes.size(); ++e)
      for (const auto& [t, w] : routes[e]) chosen.push_back({static_cast<int64_t>(e), w});
    return chosen;
  };
  RouteRule softmax;
  softmax.experts = 6, softmax.top_k = 2;
  const std::vector<float> tied{1.f, 3.f, 3.f, 0.f, 3.f, 2.f};
  double sum = 0;
  for (float v : tied) sum += std::exp(double{v} - 3.0);
  const auto got = routes_of(softmax, tied);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].first, 1);
  EXPECT_EQ(got[1].first, 2);
  for (const auto& [e, w] : got) EXPECT_NEAR(w, 1.0 / sum, 1e-6);

  // Eight experts in four groups of two, every score equal: groups 0 and 1 are kept, and
  // experts 0 and 1 chosen, each weighted 0.5 / (0.5 + 0.5) * 1.5.
  const RouteRule group{RouteRule::Kind::group_limited, 8, 2, true, 4, 2, 1.5f, Tensor::zeros(DType::f32, {8})};
  const auto equal = routes_of(group, std::vector<float>(8, 0.f));
  ASSERT_EQ(equal.size(), 2u);
  EXPECT_EQ(equal[0].first, 0);
  EXPECT_EQ(equal[1].first, 1);
  for (const auto& [e, w] : equal) EXPECT_NEAR(w, 0.75, 1e-6);
  // Groups 1 and 3 tie above the rest, and one group is kept: the lower one.
  RouteRule one_group = group;
  one_group.topk_group = 1;
  const auto kept = routes_of(one_group, {-2.f, -2.f, 1.f, 1.f, -1.f, -2.f, 1.f, 1.f});
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[0].first, 2);
  EXPECT_EQ(kept[1].first, 3);

  // Rules whose counts do not fit are errors, not reads past the scores.
  const Tensor logits = test::tensor_from(std::vector<float>(8, 0.f), {1, 8});
  RouteRule bad = group;
  bad.n_group = 3;  // does not divide 8
  EXPECT_THROW(route_tokens(bad, logits), Error);
  bad = group;
  bad.correction_bias = Tensor::zeros(DType::f32, {7});
  EXPECT_THROW(route_tokens(bad, logits), Error);
  bad = softmax;
  bad.experts = 8, bad.top_k = 9;
  EXPECT_THROW(route_tokens(bad, logits), Error);
}

TEST(FeedForward, GroupLimitedMoeRejectsBadRouting) {
  const int64_t D = 8, E = 6;
  const auto experts = [](int64_t n, int64_t width) {
    std::vector<std::unique_ptr<FeedForward>> v;
    for (int64_t e = 0; e < n; ++e)
      v.push_back(make_plain_mlp(Tensor::zeros(DType::f32, {4, width}), Tensor::zeros(DType::f32, {width, 4}),
                                 Activation::relu2));
    return v;
  };
  const auto shared = [&] { return std::move(experts(1, D)[0]); };
  GroupLimitedRouter good;
  good.weight = Tensor::zeros(DType::f32, {E, D});
  good.correction_bias = Tensor::zeros(DType::f32, {E});
  good.num_experts_per_tok = 2;
  EXPECT_NO_THROW(make_group_limited_moe(good, experts(E, D), Tensor(), Tensor(), shared()));
  const auto message = [&](GroupLimitedRouter r, std::vector<std::unique_ptr<FeedForward>> ex, Tensor in, Tensor out,
                           std::unique_ptr<FeedForward> sh) {
    try {
      make_group_limited_moe(std::move(r), std::move(ex), std::move(in), std::move(out), std::move(sh));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const auto with = [&](auto change) {
    GroupLimitedRouter r = good;
    change(r);
    return message(r, experts(E, D), Tensor(), Tensor(), shared());
  };
  EXPECT_NE(with([](auto& r) { r.n_group = 4; }).find("n_group = 4 must divide"), std::string::npos);
  EXPECT_NE(with([](auto& r) { r.n_group = 6; }).find("fewer than 2"), std::string::npos);
  EXPECT_NE(with([](auto& r) { r.n_group = 2, r.topk_group = 3; }).find("topk_group"), std::string::npos);
  EXPECT_NE(with([](auto& r) { r.n_group = 2, r.num_experts_per_tok = 4; }).find("num_experts_per_tok"),
            std::string::npos);
  EXPECT_NE(with([](auto& r) { r.correction_bias = Tensor(); }).find("e_score_correction_bias"), std::string::npos);
  EXPECT_NE(
      with([](auto& r) { r.correction_bias = Tensor::zeros(DType::f32, {E + 1}); }).find("e_score_correction_bias"),
      std::string::npos);
  EXPECT_NE(message(good, experts(E - 1, D), Tensor(), Tensor(), shared()).find("experts were given"),
            std::string::npos);
  EXPECT_NE(message(good, experts(E, D + 1), Tensor(), Tensor(), shared()).find("expert 0 must have width 8"),
            std::string::npos);
  EXPECT_NE(message(good, experts(E, 5), Tensor::zeros(DType::f32, {5, D}), Tensor(), shared()).find("pairs"),
            std::string::npos);
  EXPECT_NO_THROW(make_group_limited_moe(good, experts(E, 5), Tensor::zeros(DType::f32, {5, D}),
                                         Tensor::zeros(DType::f32, {D, 5}), shared()));
  EXPECT_NE(message(good, experts(E, D), Tensor(), Tensor(), nullptr).find("shared expert"), std::string::npos);
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
