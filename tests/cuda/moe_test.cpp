// A mixture of experts' few-token path on the GPU (src/models/moe_cuda.h): routes
// against the CPU's rule on the same router outputs, the pairs' matrix-vector products
// and the weighted sum against float64, and whole mixtures (pairs for few tokens, grouped
// GEMMs for many) against the CPU mixture.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "src/models/feed_forward.h"
#include "src/models/feed_forward_cuda.h"
#include "src/models/moe_cuda.h"
#include "tests/cuda/cuda_test.h"

namespace subq {
namespace {

using test::expect_close;
using test::rng_for_test;
using test::uniform;

Tensor device_i32(const std::vector<int32_t>& v, const Shape& s) {
  Tensor t = Tensor::empty(DType::i32, s);
  std::copy(v.begin(), v.end(), t.mutable_data<int32_t>());
  return cuda::to_device(t);
}

// Token t's (expert, weight) pairs, by expert.
std::vector<std::pair<int64_t, float>> token_routes(const Routes& routes, int64_t t) {
  std::vector<std::pair<int64_t, float>> out;
  for (size_t e = 0; e < routes.size(); ++e)
    for (const auto& [tok, w] : routes[e])
      if (tok == t) out.push_back({static_cast<int64_t>(e), w});
  return out;
}

RouteRule softmax_rule(int64_t E, int64_t k, bool normalize) {
  RouteRule r;
  r.experts = E, r.top_k = k, r.normalize = normalize;
  return r;
}

RouteRule group_rule(int64_t E, int64_t n_group, int64_t topk_group, int64_t k, bool normalize, float scale,
                     const Tensor& bias) {
  return {RouteRule::Kind::group_limited, E, k, normalize, n_group, topk_group, scale, bias};
}

// Random router outputs, and outputs drawn from {-1, 0, 1}: exact ties everywhere, which
// both devices must break toward the lower expert index.
TEST(CudaMoe, RoutesMatchTheCpuRule) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  std::vector<RouteRule> rules;
  for (int64_t E : {5, 16, 37, 130})
    for (int64_t k : {1, 2, 4})
      for (bool normalize : {false, true})
        if (k <= E) rules.push_back(softmax_rule(E, k, normalize));
  struct G {
    int64_t E, n_group, topk_group, k;
  };
  for (const G g : {G{12, 3, 2, 3}, G{12, 4, 3, 5}, G{12, 1, 1, 2}, G{12, 6, 2, 3}, G{128, 8, 4, 6}, G{96, 48, 20, 8},
                    G{64, 1, 1, 64}})
    for (bool normalize : {false, true}) {
      const Tensor bias = test::tensor_from(uniform(rng, static_cast<size_t>(g.E), -0.3f, 0.3f), {g.E});
      rules.push_back(group_rule(g.E, g.n_group, g.topk_group, g.k, normalize, normalize ? 2.5f : 1.f, bias));
    }
  for (const RouteRule& rule : rules)
    for (bool tied : {false, true})
      for (int64_t T : {1, 7, 33}) {
        const bool group = rule.kind == RouteRule::Kind::group_limited;
        SCOPED_TRACE((group ? "group-limited E " : "softmax E ") + std::to_string(rule.experts) + " k " +
                     std::to_string(rule.top_k) + " n_group " + std::to_string(rule.n_group) + (tied ? " tied" : "") +
                     " T " + std::to_string(T));
        const int64_t E = rule.experts, k = rule.top_k;
        std::vector<float> logits = uniform(rng, static_cast<size_t>(T * E), -3.f, 3.f);
        if (tied)
          for (float& v : logits) v = std::round(v / 3.f);
        const Tensor host = test::tensor_from(logits, {T, E});
        const Routes want = route_tokens(rule, host);
        const Tensor experts = test::poisoned_device_tensor(DType::i32, {T, k}),
                     weights = test::poisoned_device_tensor(DType::f32, {T, k});
        cuda::route_experts(rule, group ? cuda::to_device(rule.correction_bias) : Tensor(), cuda::to_device(host),
                            experts, weights);
        const Tensor got_e = cuda::to_host(experts), got_w = cuda::to_host(weights);
        for (int64_t t = 0; t < T; ++t) {
          std::vector<std::pair<int64_t, float>> got;
          for (int64_t j = 0; j < k; ++j)
            got.push_back({got_e.data<int32_t>()[t * k + j], got_w.data<float>()[t * k + j]});
          if (!group) {  // best first: the softmax weights never rise
            for (int64_t j = 1; j < k; ++j) EXPECT_LE(got[j].second, got[j - 1].second) << "token " << t;
          }
          std::sort(got.begin(), got.end());
          const auto cpu = token_routes(want, t);
          ASSERT_EQ(got.size(), cpu.size()) << "token " << t;
          for (size_t j = 0; j < got.size(); ++j) {
            EXPECT_EQ(got[j].first, cpu[j].first) << "token " << t;
            EXPECT_NEAR(got[j].second, cpu[j].second, 2e-6 * std::abs(cpu[j].second) + 1e-7) << "token " << t;
          }
        }
      }
  const Tensor logits = cuda::to_device(test::tensor_from(uniform(rng, 12), {2, 6}));
  const Tensor e = cuda::empty(DType::i32, {2, 2}), w = cuda::empty(DType::f32, {2, 2});
  EXPECT_THROW(cuda::route_experts(softmax_rule(7, 2, false), Tensor(), logits, e, w), Error);
  EXPECT_THROW(cuda::route_experts(softmax_rule(6, 3, false), Tensor(), logits, e, w), Error);
  EXPECT_THROW(cuda::route_experts(group_rule(6, 4, 1, 2, true, 1.f, Tensor()), Tensor(), logits, e, w), Error);
  EXPECT_THROW(cuda::route_experts(group_rule(6, 2, 1, 2, true, 1.f, Tensor()), Tensor(), logits, e, w), Error);
}

// Every dtype of weights and x, rows shared by a token's experts or one per pair, with
// and without biases; K = 64 takes 16-byte loads, K = 45 the element-wise path.
TEST(CudaMoe, ExpertLinearMatchesFloat64) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t E = 5, N = 37, T = 3, k = 2, P = T * k;
  std::vector<int32_t> ids(P);
  for (auto& i : ids) i = static_cast<int32_t>(rng() % E);
  const Tensor experts = device_i32(ids, {T, k});
  for (int64_t K : {64, 45})
    for (DType wt : {DType::f32, DType::bf16, DType::f16})
      for (bool x_f32 : {true, false})
        for (bool per_pair : {false, true})
          for (bool with_bias : {false, true}) {
            SCOPED_TRACE("K " + std::to_string(K) + " w " + dtype_name(wt) + (x_f32 ? " x f32" : " x as w") +
                         (per_pair ? " per pair" : " per token") + (with_bias ? " bias" : ""));
            const int64_t R = per_pair ? P : T;
            const DType xt = x_f32 ? DType::f32 : wt;
            const Tensor w = test::host_tensor(uniform(rng, static_cast<size_t>(E * N * K)), {E, N, K}, wt);
            const Tensor x = test::host_tensor(uniform(rng, static_cast<size_t>(R * K), -2.f, 2.f), {R, K}, xt);
            const Tensor b = test::tensor_from(uniform(rng, static_cast<size_t>(E * N)), {E, N});
            const Tensor y = test::poisoned_device_tensor(DType::f32, {P, N});
            cuda::expert_linear(cuda::to_device(x), experts, cuda::to_device(w), with_bias ? cuda::to_device(b) : Tensor(), y);
            const auto wd = test::to_double(w), xd = test::to_double(x), bd = test::to_double(b);
            std::vector<double> want(static_cast<size_t>(P * N));
            for (int64_t p = 0; p < P; ++p)
              for (int64_t n = 0; n < N; ++n) {
                const int64_t e = ids[p], row = per_pair ? p : p / k;
                double s = with_bias ? bd[e * N + n] : 0.0;
                for (int64_t i = 0; i < K; ++i) s += wd[(e * N + n) * K + i] * xd[row * K + i];
                want[p * N + n] = s;
              }
            expect_close(test::device_values(y), want, 1e-5, 1e-5, "expert_linear");
          }
  const Tensor w = cuda::to_device(test::random_tensor(rng, {E, N, 8}));
  EXPECT_THROW(cuda::expert_linear(cuda::empty(DType::f32, {T + 1, 8}), experts, w, Tensor(), cuda::empty(DType::f32, {P, N})),
               Error);
  EXPECT_THROW(cuda::expert_linear(cuda::empty(DType::bf16, {T, 8}), experts, w, Tensor(), cuda::empty(DType::f32, {P, N})),
               Error);
  EXPECT_THROW(cuda::expert_linear(cuda::empty(DType::f32, {T, 8}), experts, w, Tensor(), cuda::empty(DType::f32, {P, N + 1})),
               Error);
}

TEST(CudaMoe, CombineIsEachTokensWeightedSum) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t T = 5, k = 3, W = 41;
  const auto rows = uniform(rng, static_cast<size_t>(T * k * W), -2.f, 2.f), weights = uniform(rng, static_cast<size_t>(T * k));
  const Tensor y = test::poisoned_device_tensor(DType::f32, {T, W});
  cuda::combine_experts(cuda::to_device(test::tensor_from(rows, {T * k, W})), cuda::to_device(test::tensor_from(weights, {T, k})), y);
  std::vector<double> want(static_cast<size_t>(T * W), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t d = 0; d < W; ++d) want[t * W + d] += double{weights[t * k + j]} * rows[(t * k + j) * W + d];
  expect_close(test::device_values(y), want, 1e-6, 1e-6, "combine_experts");
  EXPECT_THROW(cuda::combine_experts(cuda::empty(DType::f32, {T * k + 1, W}), cuda::empty(DType::f32, {T, k}), y), Error);
}

// Router outputs with no two values within 1e-3 of each other (the softmax's logits or
// the group-limited rule's choice values and group scores), so that f32 rounding on
// either device cannot change a route.
bool well_separated(const std::vector<double>& logits, const RouteRule& rule) {
  std::vector<double> v;
  if (rule.kind == RouteRule::Kind::softmax_top_k) {
    v = logits;
  } else {
    const int64_t E = rule.experts, G = E / rule.n_group;
    for (int64_t e = 0; e < E; ++e) v.push_back(1 / (1 + std::exp(-logits[e])) + rule.correction_bias.data<float>()[e]);
    std::vector<double> groups;
    for (int64_t g = 0; g < rule.n_group; ++g) {
      std::vector<double> c(v.begin() + g * G, v.begin() + (g + 1) * G);
      std::sort(c.rbegin(), c.rend());
      groups.push_back(c[0] + c[1]);
    }
    v.insert(v.end(), groups.begin(), groups.end());
  }
  for (size_t i = 0; i < v.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (std::abs(v[i] - v[j]) < 1e-3) return false;
  return true;
}

// Whole mixtures on the GPU against the CPU mixture: one token and three (pairs, as
// decode runs them) and 40 (grouped); f32 and bf16 weights. bf16 rounds x for the
// matmuls (x is drawn bf16-representable, so the router sees the CPU's inputs) and the
// experts' activations.
TEST(CudaMoe, MixturesMatchTheCpu) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t D = 40, F = 24, E = 8, L = 16;
  for (DType dt : {DType::f32, DType::bf16})
    for (bool group : {false, true}) {
      SCOPED_TRACE(std::string(group ? "group-limited" : "softmax") + " " + dtype_name(dt));
      const auto w = [&](int64_t rows, int64_t cols) {
        return test::host_tensor(uniform(rng, static_cast<size_t>(rows * cols), -0.3f, 0.3f), {rows, cols}, dt);
      };
      std::unique_ptr<FeedForward> moe;
      if (!group) {
        std::vector<GatedWeights> experts;
        for (int64_t e = 0; e < E; ++e) experts.push_back({w(F, D), w(F, D), w(D, F)});
        moe = make_moe(w(E, D), std::move(experts), 2, true, Activation::silu);
      } else {
        GroupLimitedRouter r;
        r.weight = w(E, D);
        r.correction_bias = test::tensor_from(uniform(rng, static_cast<size_t>(E), -0.3f, 0.3f), {E});
        r.num_experts_per_tok = 2, r.n_group = 4, r.topk_group = 2, r.routed_scaling_factor = 1.5f;
        std::vector<std::unique_ptr<FeedForward>> experts;
        for (int64_t e = 0; e < E; ++e) experts.push_back(make_plain_mlp(w(F, L), w(L, F), Activation::relu2));
        moe = make_group_limited_moe(r, std::move(experts), w(L, D), w(D, L),
                                     make_plain_mlp(w(F, D), w(D, F), Activation::relu2));
      }
      const auto& mixture = dynamic_cast<const MixtureOfExperts&>(*moe);
      const RouteRule rule = mixture.parts().rule;
      const auto router = test::to_double(mixture.parts().router);
      const auto gpu = make_device_feed_forward(*moe, "test mixture");
      for (int64_t T : {1, 3, 40}) {
        std::vector<float> xs;
        while (static_cast<int64_t>(xs.size()) < T * D) {
          const Tensor row = test::host_tensor(uniform(rng, static_cast<size_t>(D), -2.f, 2.f), {1, D}, dt);
          const auto rd = test::to_double(row);
          std::vector<double> logits(static_cast<size_t>(E), 0.0);
          for (int64_t e = 0; e < E; ++e)
            for (int64_t d = 0; d < D; ++d) logits[e] += router[e * D + d] * rd[d];
          if (well_separated(logits, rule)) xs.insert(xs.end(), rd.begin(), rd.end());
        }
        const Tensor x = test::tensor_from(xs, {T, D});
        Tensor want = test::nan_tensor({T, D});
        moe->forward(x, want);
        const Tensor y = test::poisoned_device_tensor(DType::f32, {T, D});
        gpu->forward(cuda::to_device(test::host_tensor(xs, {T, D}, gpu->input_dtype())), y);
        const auto wd = test::to_double(want);
        const double tol = dt == DType::f32 ? 1e-5 : 2e-2;
        expect_close(test::device_values(y), wd, tol, tol * test::max_abs(wd), "T " + std::to_string(T));
      }
    }
}

}  // namespace
}  // namespace subq
