// The generalized (DPLR) delta rule, RWKV-7's WKV-7, on the GPU against the float64
// recurrence (tests/reference/delta.h) on the same bf16-rounded q, k, v, a, b: lengths
// around the 8-token staging block, head dims, batch and heads, strong and no decay,
// RWKV-7's low-rank form and free a, b, a random initial state in and the final state
// out, bf16 and f32 outputs, and consecutive calls. Outputs are NaN-poisoned first.
//
// Inputs follow RWKV-7 (as the CPU test does): kappa a unit vector, a = -kappa,
// b = kappa * eta with eta in (0, 1), log_w in [-0.61, 0], so the state stays
// O(|k| |v|). The kernel computes in f32 from the same rounded inputs as the reference,
// so the error is f32 rounding over dk-term sums carried through a contracting state:
// rtol 1e-3 and atol 1e-4 of max|reference| for f32 outputs and the state, plus one
// bf16 rounding (2^-8 relative) for bf16 outputs. A wrong index, decay, block carry or column
// mapping is off by O(max|reference|).
#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "src/ops/delta/generalized_delta_rule_cuda.h"
#include "tests/cuda/cuda_test.h"
#include "tests/reference/delta.h"

namespace subq::test {
namespace {

struct Case {
  int64_t B = 2, T = 1, H = 3, dk = 64, dv = 64;
  float log_w_lo = -0.61f, log_w_hi = 0.f;
  bool rwkv_low_rank = true;  // else a, b uniform in +-0.5 / sqrt(dk)
  DType out = DType::f32;
  float scale = 0.5f;
};

struct Inputs {
  Tensor q, k, v, a, b, log_w, state0;  // host: q, k, v, a, b bf16; log_w, state0 f32
};

Inputs make_inputs(const Case& c, std::mt19937_64& rng) {
  const Shape keys{c.B, c.T, c.H, c.dk};
  const auto n = static_cast<size_t>(keys.numel());
  const float kr = 1.f / std::sqrt(static_cast<float>(c.dk));
  Inputs in;
  in.q = host_tensor(uniform(rng, n), keys, DType::bf16);
  in.k = host_tensor(uniform(rng, n, -kr, kr), keys, DType::bf16);
  in.v = host_tensor(uniform(rng, static_cast<size_t>(c.B * c.T * c.H * c.dv)), Shape{c.B, c.T, c.H, c.dv},
                     DType::bf16);
  in.log_w = host_tensor(uniform(rng, n, c.log_w_lo, c.log_w_hi), keys, DType::f32);
  std::vector<float> a(n), b(n);
  if (c.rwkv_low_rank) {
    const auto kappa = uniform(rng, n), eta = uniform(rng, n, 0.f, 1.f);
    for (size_t r = 0; r < n; r += static_cast<size_t>(c.dk)) {
      double ss = 0;
      for (int64_t d = 0; d < c.dk; ++d) ss += static_cast<double>(kappa[r + d]) * kappa[r + d];
      const auto inv = static_cast<float>(1 / std::sqrt(ss + 1e-12));
      for (int64_t d = 0; d < c.dk; ++d) {
        a[r + d] = -kappa[r + d] * inv;
        b[r + d] = kappa[r + d] * inv * eta[r + d];
      }
    }
  } else {
    a = uniform(rng, n, -0.5f * kr, 0.5f * kr);
    b = uniform(rng, n, -0.5f * kr, 0.5f * kr);
  }
  in.a = host_tensor(a, keys, DType::bf16);
  in.b = host_tensor(b, keys, DType::bf16);
  const Shape ss{c.B, c.H, c.dk, c.dv};
  in.state0 = host_tensor(uniform(rng, static_cast<size_t>(ss.numel())), ss, DType::f32);
  return in;
}

std::vector<double> reference_run(const Case& c, const Inputs& in, std::vector<double>& state) {
  state = to_double(in.state0);
  const reference::DeltaShape s{.B = c.B, .T = c.T, .Hq = c.H, .Hk = c.H, .Hv = c.H, .dk = c.dk, .dv = c.dv};
  return reference::generalized_delta_rule(s, to_double(in.q), to_double(in.k), to_double(in.v), to_double(in.a),
                                           to_double(in.b), to_double(in.log_w), c.scale, state);
}

void expect_near_reference(const std::vector<double>& got, const std::vector<double>& want, DType dtype,
                           const std::string& what) {
  const double rtol = dtype == DType::bf16 ? 1e-3 + 1.0 / 256 : 1e-3;
  expect_close(got, want, rtol, 1e-4 * max_abs(want), what);
}

ops::GeneralizedDeltaRuleOptions options_for(const Case& c) {
  ops::GeneralizedDeltaRuleOptions opt;
  opt.scale = c.scale;
  return opt;
}

void run(const Inputs& in, const Tensor& state, const Tensor& o, const Case& c) {
  cuda::generalized_delta_rule(cuda::to_device(in.q), cuda::to_device(in.k), cuda::to_device(in.v),
                               cuda::to_device(in.a), cuda::to_device(in.b), cuda::to_device(in.log_w), state, o,
                               options_for(c));
}

std::string describe(const Case& c) {
  return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
         " dk=" + std::to_string(c.dk) + " dv=" + std::to_string(c.dv) + " log_w in [" + std::to_string(c.log_w_lo) +
         ", " + std::to_string(c.log_w_hi) + "]" + (c.rwkv_low_rank ? "" : " free a, b") +
         (c.out == DType::f32 ? " o=f32" : " o=bf16");
}

void check_case(const Case& c) {
  SCOPED_TRACE(describe(c));
  auto rng = rng_for_test();
  const Inputs in = make_inputs(c, rng);
  std::vector<double> ref_state;
  const auto want = reference_run(c, in, ref_state);
  const Tensor state = cuda::to_device(in.state0);
  const Tensor o = poisoned_device_tensor(c.out, {c.B, c.T, c.H, c.dv});
  run(in, state, o, c);
  expect_near_reference(device_values(o), want, c.out, "o");
  expect_near_reference(device_values(state), ref_state, DType::f32, "final state");
}

Case base(int64_t T, int64_t dk, int64_t dv) {
  Case c;
  c.T = T;
  c.dk = dk;
  c.dv = dv;
  return c;
}

TEST(CudaGeneralizedDeltaRule, OverLengths) {
  SUBQ_REQUIRE_GPU();
  for (int64_t T : {1, 5, 7, 8, 9, 16, 17, 63, 1000}) check_case(base(T, 64, 64));
  Case c = base(2049, 64, 64);
  c.out = DType::bf16;
  check_case(c);
}

TEST(CudaGeneralizedDeltaRule, HeadDims) {
  SUBQ_REQUIRE_GPU();
  // dv not a multiple of the CTA's 32 columns leaves a partial tile.
  for (auto [dk, dv] : {std::pair<int64_t, int64_t>{64, 8}, {64, 16}, {64, 40}, {64, 128}, {128, 64}, {128, 72},
                        {128, 256}}) {
    Case c = base(130, dk, dv);
    c.B = 1;
    check_case(c);
  }
}

// launch() in generalized_delta_rule.cu picks the CTA shape by grid size: on a GPU of
// 100 to 132 multiprocessors (A100, H100, H200) the first two cases take 16-column CTAs,
// the next two 32-column CTAs of 4 rows per thread, the last two 8 rows per thread.
TEST(CudaGeneralizedDeltaRule, BatchAndManyHeads) {
  SUBQ_REQUIRE_GPU();
  for (auto [B, H, dk] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 64}, {3, 5, 64}, {3, 32, 64}, {3, 32, 128},
                          {4, 32, 64}, {4, 32, 128}}) {
    Case c = base(77, dk, B * H > 100 ? 128 : 64);
    c.B = B;
    c.H = H;
    c.out = DType::bf16;
    check_case(c);
  }
}

TEST(CudaGeneralizedDeltaRule, StrongNoDecayAndFreeLowRank) {
  SUBQ_REQUIRE_GPU();
  Case strong = base(300, 64, 64);
  strong.log_w_lo = -30.f;
  strong.log_w_hi = -5.f;
  check_case(strong);
  Case unit = base(300, 128, 64);
  unit.log_w_lo = unit.log_w_hi = 0.f;
  check_case(unit);
  Case free = base(300, 64, 96);
  free.rwkv_low_rank = false;
  check_case(free);
}

// One call on T tokens equals consecutive calls of 1, 8, 3, 100 and 188 tokens that carry
// the state (the staging blocks then start elsewhere).
TEST(CudaGeneralizedDeltaRule, ConsecutiveCallsContinueTheSequence) {
  SUBQ_REQUIRE_GPU();
  Case c = base(300, 64, 64);
  SCOPED_TRACE(describe(c));
  auto rng = rng_for_test();
  const Inputs in = make_inputs(c, rng);
  std::vector<double> ref_state;
  const auto want = reference_run(c, in, ref_state);
  const int64_t B = c.B, T = c.T, H = c.H, dv = c.dv;
  const Tensor state = cuda::to_device(in.state0);
  std::vector<double> got(static_cast<size_t>(B * T * H * dv));
  int64_t t0 = 0;
  for (int64_t len : {1, 8, 3, 100, 188}) {
    auto cut = [&](const Tensor& t) { return cuda::to_device(t.slice(1, t0, t0 + len).contiguous()); };
    const Tensor o = poisoned_device_tensor(DType::f32, {B, len, H, dv});
    cuda::generalized_delta_rule(cut(in.q), cut(in.k), cut(in.v), cut(in.a), cut(in.b), cut(in.log_w), state, o,
                                 options_for(c));
    const auto ov = device_values(o);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < len; ++t)
        for (int64_t i = 0; i < H * dv; ++i)
          got[static_cast<size_t>((b * T + t0 + t) * H * dv + i)] = ov[static_cast<size_t>((b * len + t) * H * dv + i)];
    t0 += len;
  }
  ASSERT_EQ(t0, T);
  expect_near_reference(got, want, DType::f32, "o over five calls");
  expect_near_reference(device_values(state), ref_state, DType::f32, "final state over five calls");
}

TEST(CudaGeneralizedDeltaRule, RejectsBadArguments) {
  SUBQ_REQUIRE_GPU();
  const int64_t B = 1, T = 8, H = 2, dk = 64, dv = 64;
  const Tensor x = cuda::empty(DType::bf16, {B, T, H, dk});
  const Tensor w = cuda::empty(DType::f32, {B, T, H, dk});
  const Tensor state = cuda::empty(DType::f32, {B, H, dk, dv});
  const Tensor o = cuda::empty(DType::f32, {B, T, H, dv});
  const ops::GeneralizedDeltaRuleOptions opt;
  auto call = [&](const Tensor& q, const Tensor& v, const Tensor& a, const Tensor& log_w, const Tensor& s,
                  const Tensor& out) { cuda::generalized_delta_rule(q, x, v, a, x, log_w, s, out, opt); };
  EXPECT_NO_THROW(call(x, x, x, w, state, o));
  cuda::synchronize();
  // dtypes and devices
  EXPECT_THROW(call(w, x, x, w, state, o), Error);
  EXPECT_THROW(call(x, x, x, x, state, o), Error);
  EXPECT_THROW(call(x, x, w, w, state, o), Error);
  EXPECT_THROW(call(x, x, x, w, state, cuda::empty(DType::f16, {B, T, H, dv})), Error);
  EXPECT_THROW(call(Tensor::empty(DType::bf16, {B, T, H, dk}), x, x, w, state, o), Error);
  EXPECT_THROW(call(x, x, x, w, Tensor::empty(DType::f32, {B, H, dk, dv}), o), Error);
  // head dims
  const Tensor x96 = cuda::empty(DType::bf16, {B, T, H, 96});
  EXPECT_THROW(cuda::generalized_delta_rule(x96, x96, x, x96, x96, cuda::empty(DType::f32, {B, T, H, 96}),
                                            cuda::empty(DType::f32, {B, H, 96, dv}), o, opt),
               Error);
  const Tensor v36 = cuda::empty(DType::bf16, {B, T, H, 36});
  EXPECT_THROW(call(x, v36, x, w, cuda::empty(DType::f32, {B, H, dk, 36}), cuda::empty(DType::f32, {B, T, H, 36})),
               Error);
  // shapes
  EXPECT_THROW(call(x, x, cuda::empty(DType::bf16, {B, T + 1, H, dk}), w, state, o), Error);
  EXPECT_THROW(call(x, x, x, w, cuda::empty(DType::f32, {B, H + 1, dk, dv}), o), Error);
  EXPECT_THROW(call(x, x, x, w, state, cuda::empty(DType::f32, {B, T, H, dv + 8})), Error);
  EXPECT_THROW(call(cuda::empty(DType::bf16, {B, T, H}), x, x, w, state, o), Error);
  EXPECT_THROW(call(x, x, x, w, state, Tensor{}), Error);
  // options
  ops::GeneralizedDeltaRuleOptions nan_scale;
  nan_scale.scale = std::nanf("");
  EXPECT_THROW(cuda::generalized_delta_rule(x, x, x, x, x, w, state, o, nan_scale), Error);
}

}  // namespace
}  // namespace subq::test
