// The (gated) delta rule on the GPU against the float64 recurrence (tests/reference/delta.h)
// on the same bf16-rounded q, k, v: DeltaNet and Gated DeltaNet, with and without l2
// normalisation, T around the 64-token chunk, head sharing, head dims, strong and no
// decay, non-zero initial state in and final state out, and consecutive calls.
//
// Tolerance: every tensor-core operand is bf16 (relative rounding 2^-9 = 2e-3): the state
// in K S and Q S, the residual R, (I + M)^-1, the masked Q K^T and V'; bf16 outputs add
// another 2^-9. The delta rule writes an error in a prediction S^T k back into S once,
// where later updates along k overwrite it or the gate decays it, so the state's error
// stays at a few roundings instead of growing with T (keys are l2-normalised, or scaled
// to |k| < 1 without normalisation, and beta < 1, so I - beta k k^T is a contraction).
// A host emulation of the kernels' rounding points on these cases gave errors up to
// 0.4% of max|ref| (and 5e-7 with the roundings removed), not growing from T = 64 to
// 1000, so |err| <= 2e-2 max|ref| + 1e-2 |ref| for o and the final state leaves a 5x
// margin; a wrong index, gate, chunk carry or head mapping is off by O(max|ref|).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "src/ops/delta/delta_rule_cuda.h"
#include "tests/cuda/cuda_test.h"
#include "tests/reference/delta.h"

namespace subq::test {
namespace {

using reference::DeltaShape;

struct Case {
  DeltaShape s;
  bool gated = true;
  bool l2 = true;
  float gate_lo = -0.5f, gate_hi = 0.f;
  DType out = DType::f32;
};

struct Inputs {
  Tensor q, k, v, beta, g, state0;  // host: q, k, v bf16; the rest f32
};

Inputs make_inputs(const Case& c, std::mt19937_64& rng) {
  const auto& s = c.s;
  const int64_t H = s.H();
  // Without l2 normalisation keep |k| < 1: entries in +-1/sqrt(dk).
  const float kr = c.l2 ? 1.f : 1.f / std::sqrt(static_cast<float>(s.dk));
  const auto n = [](const Shape& sh) { return static_cast<size_t>(sh.numel()); };
  const Shape qs{s.B, s.T, s.Hq, s.dk}, ks{s.B, s.T, s.Hk, s.dk}, vs{s.B, s.T, s.Hv, s.dv}, ts{s.B, s.T, H};
  const Shape ss{s.B, H, s.dk, s.dv};
  Inputs in;
  in.q = host_tensor(uniform(rng, n(qs)), qs, DType::bf16);
  in.k = host_tensor(uniform(rng, n(ks), -kr, kr), ks, DType::bf16);
  in.v = host_tensor(uniform(rng, n(vs)), vs, DType::bf16);
  in.beta = host_tensor(uniform(rng, n(ts), 0.05f, 1.f), ts, DType::f32);
  if (c.gated) in.g = host_tensor(uniform(rng, n(ts), c.gate_lo, c.gate_hi), ts, DType::f32);
  in.state0 = host_tensor(uniform(rng, n(ss)), ss, DType::f32);
  return in;
}

ops::DeltaRuleOptions options_for(const Case& c) {
  ops::DeltaRuleOptions opt;
  opt.l2_normalize_qk = c.l2;
  opt.scale = 1.f / std::sqrt(static_cast<float>(c.s.dk));
  return opt;
}

std::vector<double> reference_run(const Case& c, const Inputs& in, std::vector<double>& state) {
  const auto opt = options_for(c);
  state = to_double(in.state0);
  return reference::delta_rule(c.s, to_double(in.q), to_double(in.k), to_double(in.v), to_double(in.beta),
                               c.gated ? to_double(in.g) : std::vector<double>{}, opt.l2_normalize_qk, opt.l2_eps,
                               opt.scale, state);
}

void expect_near_reference(const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
  expect_close(got, want, 1e-2, 2e-2 * max_abs(want), what);
}

std::string describe(const Case& c) {
  const auto& s = c.s;
  return "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " Hq/Hk/Hv=" + std::to_string(s.Hq) + "/" +
         std::to_string(s.Hk) + "/" + std::to_string(s.Hv) + " dk=" + std::to_string(s.dk) +
         " dv=" + std::to_string(s.dv) + (c.gated ? " gated" : " ungated") + (c.l2 ? " l2" : " raw") +
         " gate=[" + std::to_string(c.gate_lo) + "," + std::to_string(c.gate_hi) + "]" +
         (c.out == DType::f32 ? " o=f32" : " o=bf16");
}

void check_case(const Case& c) {
  SCOPED_TRACE(describe(c));
  auto rng = rng_for_test();
  const Inputs in = make_inputs(c, rng);
  std::vector<double> ref_state;
  const auto want = reference_run(c, in, ref_state);

  const Tensor state = cuda::to_device(in.state0);
  const Tensor o = poisoned_device_tensor(c.out, {c.s.B, c.s.T, c.s.H(), c.s.dv});
  cuda::delta_rule(cuda::to_device(in.q), cuda::to_device(in.k), cuda::to_device(in.v), cuda::to_device(in.beta),
                   c.gated ? cuda::to_device(in.g) : Tensor{}, state, o, options_for(c));
  expect_near_reference(device_values(o), want, "o");
  expect_near_reference(device_values(state), ref_state, "final state");
}

Case base(int64_t T, int64_t dk, int64_t dv, bool gated) {
  Case c;
  c.s = DeltaShape{.B = 2, .T = T, .Hq = 2, .Hk = 2, .Hv = 2, .dk = dk, .dv = dv};
  c.gated = gated;
  return c;
}

TEST(CudaDeltaRule, DeltaNetOverLengths) {
  SUBQ_REQUIRE_GPU();
  for (int64_t T : {1, 5, 63, 64, 65, 1000}) check_case(base(T, 128, 128, false));
}

TEST(CudaDeltaRule, GatedDeltaNetOverLengths) {
  SUBQ_REQUIRE_GPU();
  for (int64_t T : {1, 5, 63, 64, 65, 1000}) {
    Case c = base(T, 128, 128, true);
    c.out = DType::bf16;
    check_case(c);
    check_case(base(T, 64, 64, true));
  }
}

TEST(CudaDeltaRule, WithoutL2Normalisation) {
  SUBQ_REQUIRE_GPU();
  for (bool gated : {true, false}) {
    Case c = base(150, 64, 128, gated);
    c.l2 = false;
    check_case(c);
    c = base(130, 128, 64, gated);
    c.l2 = false;
    c.out = DType::bf16;
    check_case(c);
  }
}

TEST(CudaDeltaRule, HeadDims) {
  SUBQ_REQUIRE_GPU();
  for (auto [dk, dv] : {std::pair<int64_t, int64_t>{64, 64}, {64, 128}, {128, 64}, {128, 128}, {128, 256}, {64, 32}}) {
    Case c = base(200, dk, dv, true);
    c.s.B = 1;
    check_case(c);
  }
}

TEST(CudaDeltaRule, HeadSharingAndBatch) {
  SUBQ_REQUIRE_GPU();
  // Qwen3-Next: q, k with fewer heads than v; plus GQA-like and single-head layouts.
  for (auto [hq, hk, hv] : {std::tuple<int64_t, int64_t, int64_t>{2, 2, 8}, {4, 4, 8}, {8, 1, 1}, {1, 1, 1},
                            {3, 3, 3}, {1, 2, 4}}) {
    Case c = base(130, 128, 128, true);
    c.s.B = 3;
    c.s.Hq = hq;
    c.s.Hk = hk;
    c.s.Hv = hv;
    check_case(c);
  }
}

// Grids of many heads take the 64-column scan tile (scan_tile() in delta_rule.cu), the
// small cases above the 32-column one.
TEST(CudaDeltaRule, ManyHeadsTakeTheWideStateTile) {
  SUBQ_REQUIRE_GPU();
  Case c = base(130, 128, 128, true);
  c.s.B = 4;
  c.s.Hq = c.s.Hk = 8;
  c.s.Hv = 32;
  check_case(c);
  c = base(100, 64, 64, false);
  c.s.B = 4;
  c.s.Hq = c.s.Hk = c.s.Hv = 32;
  c.out = DType::bf16;
  check_case(c);
}

TEST(CudaDeltaRule, StrongDecayAndNoDecay) {
  SUBQ_REQUIRE_GPU();
  Case strong = base(200, 128, 128, true);
  strong.gate_lo = -30.f;
  strong.gate_hi = -5.f;
  check_case(strong);
  Case unit = base(200, 128, 128, true);
  unit.gate_lo = unit.gate_hi = 0.f;
  check_case(unit);
  Case mild = base(1000, 64, 128, true);
  mild.gate_lo = -0.05f;
  check_case(mild);
}

// One call on T tokens equals consecutive calls of 1, 64, 1, 100 and 134 tokens that
// carry the state (chunk boundaries then fall elsewhere, so equal within rounding).
TEST(CudaDeltaRule, ConsecutiveCallsContinueTheSequence) {
  SUBQ_REQUIRE_GPU();
  for (bool gated : {true, false}) {
    Case c = base(300, 128, 128, gated);
    c.s.Hq = c.s.Hk = 1;
    c.s.Hv = 4;
    SCOPED_TRACE(describe(c));
    auto rng = rng_for_test();
    const Inputs in = make_inputs(c, rng);
    std::vector<double> ref_state;
    const auto want = reference_run(c, in, ref_state);
    const int64_t B = c.s.B, T = c.s.T, H = c.s.H(), dv = c.s.dv;

    const Tensor whole_state = cuda::to_device(in.state0);
    const Tensor whole = poisoned_device_tensor(DType::f32, {B, T, H, dv});
    cuda::delta_rule(cuda::to_device(in.q), cuda::to_device(in.k), cuda::to_device(in.v), cuda::to_device(in.beta),
                     gated ? cuda::to_device(in.g) : Tensor{}, whole_state, whole, options_for(c));
    const auto whole_o = device_values(whole);

    const Tensor state = cuda::to_device(in.state0);
    std::vector<double> got(static_cast<size_t>(B * T * H * dv));
    int64_t t0 = 0;
    for (int64_t len : {1, 64, 1, 100, 134}) {
      auto cut = [&](const Tensor& t) { return cuda::to_device(t.slice(1, t0, t0 + len).contiguous()); };
      const Tensor o = poisoned_device_tensor(DType::f32, {B, len, H, dv});
      cuda::delta_rule(cut(in.q), cut(in.k), cut(in.v), cut(in.beta), gated ? cut(in.g) : Tensor{}, state, o,
                       options_for(c));
      const auto ov = device_values(o);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < len; ++t)
          for (int64_t i = 0; i < H * dv; ++i)
            got[static_cast<size_t>((b * T + t0 + t) * H * dv + i)] = ov[static_cast<size_t>((b * len + t) * H * dv + i)];
      t0 += len;
    }
    ASSERT_EQ(t0, T);
    expect_near_reference(whole_o, want, "o in one call");
    expect_near_reference(got, want, "o over five calls");
    expect_near_reference(got, whole_o, "five calls against one");
    expect_near_reference(device_values(state), ref_state, "final state over five calls");
    expect_near_reference(device_values(state), device_values(whole_state), "final state, five calls against one");
  }
}

TEST(CudaDeltaRule, RejectsBadArguments) {
  SUBQ_REQUIRE_GPU();
  const int64_t B = 1, T = 8, H = 2, dk = 64, dv = 64;
  const Tensor q = cuda::empty(DType::bf16, {B, T, H, dk});
  const Tensor v = cuda::empty(DType::bf16, {B, T, H, dv});
  const Tensor beta = cuda::empty(DType::f32, {B, T, H});
  const Tensor state = cuda::empty(DType::f32, {B, H, dk, dv});
  const Tensor o = cuda::empty(DType::f32, {B, T, H, dv});
  const ops::DeltaRuleOptions opt;
  auto call = [&](const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& beta_, const Tensor& g_,
                  const Tensor& state_, const Tensor& o_, const ops::DeltaRuleOptions& opt_) {
    cuda::delta_rule(q_, k_, v_, beta_, g_, state_, o_, opt_);
  };
  EXPECT_NO_THROW(call(q, q, v, beta, beta, state, o, opt));
  cuda::synchronize();
  // dtype, device, head dims
  EXPECT_THROW(call(cuda::empty(DType::f32, {B, T, H, dk}), q, v, beta, Tensor{}, state, o, opt), Error);
  EXPECT_THROW(call(q, q, v, beta, Tensor{}, state, cuda::empty(DType::f16, {B, T, H, dv}), opt), Error);
  EXPECT_THROW(call(Tensor::empty(DType::bf16, {B, T, H, dk}), q, v, beta, Tensor{}, state, o, opt), Error);
  const Tensor q96 = cuda::empty(DType::bf16, {B, T, H, 96});
  EXPECT_THROW(call(q96, q96, v, beta, Tensor{}, cuda::empty(DType::f32, {B, H, 96, dv}), o, opt), Error);
  const Tensor v48 = cuda::empty(DType::bf16, {B, T, H, 48});
  EXPECT_THROW(call(q, q, v48, beta, Tensor{}, cuda::empty(DType::f32, {B, H, dk, 48}),
                    cuda::empty(DType::f32, {B, T, H, 48}), opt),
               Error);
  // shapes and head counts
  EXPECT_THROW(call(q, cuda::empty(DType::bf16, {B, T + 1, H, dk}), v, beta, Tensor{}, state, o, opt), Error);
  EXPECT_THROW(call(q, q, cuda::empty(DType::bf16, {B, T, 3, dv}), cuda::empty(DType::f32, {B, T, 3}), Tensor{},
                    cuda::empty(DType::f32, {B, 3, dk, dv}), cuda::empty(DType::f32, {B, T, 3, dv}), opt),
               Error);
  EXPECT_THROW(call(q, q, v, cuda::empty(DType::f32, {B, T, 3}), Tensor{}, state, o, opt), Error);
  EXPECT_THROW(call(q, q, v, beta, cuda::empty(DType::f32, {B, T - 1, H}), state, o, opt), Error);
  EXPECT_THROW(call(q, q, v, beta, Tensor{}, cuda::empty(DType::f32, {B, H, dk, dv - 32}), o, opt), Error);
  EXPECT_THROW(call(q, q, v, beta, Tensor{}, state, cuda::empty(DType::f32, {B, T, 1, dv}), opt), Error);
  EXPECT_THROW(call(q, q, v, cuda::empty(DType::bf16, {B, T, H}), Tensor{}, state, o, opt), Error);
  EXPECT_THROW(call(q, q, v, beta, Tensor{}, cuda::empty(DType::bf16, {B, H, dk, dv}), o, opt), Error);
  // options
  ops::DeltaRuleOptions chunk32 = opt;
  chunk32.chunk = 32;
  EXPECT_THROW(call(q, q, v, beta, Tensor{}, state, o, chunk32), Error);
  ops::DeltaRuleOptions bad_eps = opt;
  bad_eps.l2_normalize_qk = true;
  bad_eps.l2_eps = 0.f;
  EXPECT_THROW(call(q, q, v, beta, Tensor{}, state, o, bad_eps), Error);
}

}  // namespace
}  // namespace subq::test
