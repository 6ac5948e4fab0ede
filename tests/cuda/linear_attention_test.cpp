// Chunked gated linear attention and Mamba-2 SSD on the GPU against the float64
// recurrences (tests/reference/linear_attention.h) on the same bf16-rounded inputs.
// Tolerance: the kernels round four things to bf16 (relative 2^-9 each): the chunk start
// states passed between the kernels, the decayed keys k_j 2^(G_last - G_j) w_j of the
// state pass, the decayed and masked scores before the P V product, and a bf16 output.
// Each output is a sum of many random-sign terms, so these errors stay a few 2^-9 of the
// outputs' RMS, however large the state grows without decay:
// |err| <= 2e-2 rms(o) + 1e-2 |o| holds with margin, while a wrong decay, mask, carry,
// head mapping or chunk boundary is off by O(rms). The f32 final state sees only the
// decayed-key rounding: |err| <= 1e-2 rms(S) + 1e-2 |S|.
#include <cmath>
#include <string>

#include "src/ops/linear/gated_linear_attention_cuda.h"
#include "tests/cuda/cuda_test.h"
#include "tests/reference/linear_attention.h"

namespace subq::test {
namespace {

// [B, t, ...] and [B, T - t, ...] (rows of `row` values) joined into [B, T, ...]: the
// outputs of two consecutive calls as one call over T tokens would give them.
std::vector<double> join_in_time(const std::vector<double>& first, const std::vector<double>& second, int64_t B,
                                 int64_t t, int64_t T, int64_t row) {
  std::vector<double> all(static_cast<size_t>(B * T * row));
  const size_t r = static_cast<size_t>(row);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T; ++i) {
      const double* src = i < t ? &first[static_cast<size_t>(b * t + i) * r]
                                : &second[static_cast<size_t>(b * (T - t) + i - t) * r];
      std::copy_n(src, r, &all[static_cast<size_t>(b * T + i) * r]);
    }
  return all;
}

using ops::LinearGate;

double rms(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return v.empty() ? 0.0 : std::sqrt(s / static_cast<double>(v.size()));
}

void expect_output_close(const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
  expect_close(got, want, 1e-2, 2e-2 * rms(want) + 1e-6, what);
}

// Two GPU outputs, each within expect_output_close's bound of the float64 reference, are
// within the sum of their bounds of each other: one call against two cut at another
// token rounds its states to bf16 at other chunk boundaries. (With the single bound, 3 of
// 256000 elements of one draw differed by 1.07x it, both sides passing against the
// reference; H200, 2026-12-02.)
void expect_outputs_agree(const std::vector<double>& a, const std::vector<double>& b, const std::string& what) {
  expect_close(a, b, 2e-2, 4e-2 * rms(b) + 2e-6, what);
}

// The state pass rounds each decay-weighted key to bf16 before its tensor-core product
// (as mamba_ssm's and fla's kernels do): up to 2^-9 relative per term. A float64
// emulation of exactly that rounding (T = 1000, the largest case here) put the worst of
// 65536 elements at 1.06% of the state's rms on average and 1.5% at most over 200
// draws, so the bound is 3% of the rms; a wrong decay or a lost chunk is off by ~100%.
void expect_state_close(const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
  expect_close(got, want, 1e-2, 3e-2 * rms(want) + 1e-6, what);
}

struct GlaCase {
  int64_t B, T, Hq, Hk, Hv, dk, dv;
  LinearGate gate;
  float gate_lo = -0.3f, gate_hi = 0.f;  // log-gate range
  bool f32_out = false;
};

std::string describe(const GlaCase& c) {
  const char* gates[] = {"none", "per_head", "per_token", "per_token_vector"};
  return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " Hq=" + std::to_string(c.Hq) +
         " Hk=" + std::to_string(c.Hk) + " Hv=" + std::to_string(c.Hv) + " dk=" + std::to_string(c.dk) +
         " dv=" + std::to_string(c.dv) + " gate=" + gates[static_cast<int>(c.gate)] + " log a in [" +
         std::to_string(c.gate_lo) + ", " + std::to_string(c.gate_hi) + "]" + (c.f32_out ? " f32 out" : "");
}

// Host inputs (bf16 q/k/v, f32 gate and state) of one problem.
struct GlaData {
  reference::LinearAttentionShape shape;
  ops::LinearAttentionOptions opt;
  Tensor q, k, v, gate, state;  // host
  int64_t H = 0;
};

GlaData make_gla(const GlaCase& c, std::mt19937_64& rng) {
  GlaData d;
  d.shape = {c.B, c.T, c.Hq, c.Hk, c.Hv, c.dk, c.dv};
  d.H = d.shape.H();
  d.opt.gate = c.gate;
  d.opt.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.dk)));
  auto bf16_tensor = [&](const Shape& s) {
    return host_tensor(uniform(rng, static_cast<size_t>(s.numel())), s, DType::bf16);
  };
  d.q = bf16_tensor({c.B, c.T, c.Hq, c.dk});
  d.k = bf16_tensor({c.B, c.T, c.Hk, c.dk});
  d.v = bf16_tensor({c.B, c.T, c.Hv, c.dv});
  if (c.gate == LinearGate::per_head) d.gate = random_tensor(rng, {d.H}, c.gate_lo, c.gate_hi);
  if (c.gate == LinearGate::per_token) d.gate = random_tensor(rng, {c.B, c.T, d.H}, c.gate_lo, c.gate_hi);
  if (c.gate == LinearGate::per_token_vector)
    d.gate = random_tensor(rng, {c.B, c.T, d.H, c.dk}, c.gate_lo, c.gate_hi);
  d.state = random_tensor(rng, {c.B, d.H, c.dk, c.dv});
  return d;
}

Tensor to_gpu(const Tensor& t) { return t.defined() ? cuda::to_device(t) : Tensor(); }

// Runs the GPU op on tokens [t0, t1) of `d`, continuing `dev_state`; returns o.
std::vector<double> run_gla_part(const GlaData& d, const GlaCase& c, const Tensor& dev_state, int64_t t0, int64_t t1) {
  auto cut = [&](const Tensor& t) { return cuda::to_device(t.slice(1, t0, t1).contiguous()); };
  const bool per_token = c.gate == LinearGate::per_token || c.gate == LinearGate::per_token_vector;
  const Tensor gate = per_token ? cut(d.gate) : to_gpu(d.gate);
  const Tensor o = poisoned_device_tensor(c.f32_out ? DType::f32 : DType::bf16, {c.B, t1 - t0, d.H, c.dv});
  cuda::gated_linear_attention(cut(d.q), cut(d.k), cut(d.v), gate, dev_state, o, d.opt);
  return device_values(o);
}

std::vector<double> reference_gla(const GlaData& d, std::vector<double>& state) {
  state = to_double(d.state);
  return reference::linear_attention(d.shape, to_double(d.q), to_double(d.k), to_double(d.v),
                                     d.gate.defined() ? to_double(d.gate) : std::vector<double>{}, d.opt, state);
}

void run_gla(const GlaCase& c) {
  SCOPED_TRACE(describe(c));
  auto rng = rng_for_test();
  const GlaData d = make_gla(c, rng);
  std::vector<double> want_state;
  const auto want = reference_gla(d, want_state);
  const Tensor dev_state = cuda::to_device(d.state);
  expect_output_close(run_gla_part(d, c, dev_state, 0, c.T), want, "o");
  expect_state_close(device_values(dev_state), want_state, "final state");
}

TEST(CudaLinearAttention, EveryGateAtChunkEdges) {
  SUBQ_REQUIRE_GPU();
  for (LinearGate gate : {LinearGate::none, LinearGate::per_head, LinearGate::per_token, LinearGate::per_token_vector})
    for (int64_t T : {1, 5, 63, 64, 65, 1000}) {
      GlaCase c{2, T, 2, 2, 2, 64, 128, gate};
      if (gate == LinearGate::per_head) c.gate_lo = -0.1f, c.gate_hi = -0.01f;
      run_gla(c);
    }
}

TEST(CudaLinearAttention, HeadDims) {
  SUBQ_REQUIRE_GPU();
  for (int64_t dk : {64, 128})
    for (int64_t dv : {64, 128})
      for (LinearGate gate : {LinearGate::per_token, LinearGate::per_token_vector})
        run_gla({1, 200, 3, 3, 3, dk, dv, gate});
}

TEST(CudaLinearAttention, GroupedHeadsAndBatch) {
  SUBQ_REQUIRE_GPU();
  run_gla({3, 130, 2, 1, 8, 128, 64, LinearGate::per_token});  // GQA-style q/k sharing
  run_gla({2, 77, 8, 2, 4, 64, 128, LinearGate::per_head, -0.2f, -0.05f});
  run_gla({1, 257, 1, 1, 1, 128, 128, LinearGate::per_token});  // one head
  run_gla({4, 90, 4, 4, 4, 128, 128, LinearGate::none});
  run_gla({2, 190, 4, 2, 4, 128, 128, LinearGate::per_token_vector});  // GLA with shared q/k heads
}

TEST(CudaLinearAttention, StrongDecayAndNoDecay) {
  SUBQ_REQUIRE_GPU();
  run_gla({2, 300, 2, 2, 2, 128, 64, LinearGate::per_token, -3.f, -1.f});    // forgets within a few tokens
  run_gla({1, 200, 2, 2, 2, 64, 64, LinearGate::per_head, -20.f, -10.f});    // a^64 underflows to 0
  run_gla({1, 1000, 2, 2, 2, 128, 128, LinearGate::per_token, -1e-4f, 0.f});  // barely decays
  run_gla({2, 1000, 2, 2, 2, 64, 64, LinearGate::none});                      // state grows over 1000 tokens
  // The vector gate: per dk index a forgets within one token (2^{G} of a chunk's span
  // underflows, and the diagonal block's differences are large), and barely decays.
  run_gla({2, 300, 2, 2, 2, 128, 64, LinearGate::per_token_vector, -20.f, -1.f});
  run_gla({1, 1000, 2, 2, 2, 64, 128, LinearGate::per_token_vector, -1e-4f, 0.f});
}

TEST(CudaLinearAttention, F32Output) {
  SUBQ_REQUIRE_GPU();
  for (LinearGate gate : {LinearGate::per_token, LinearGate::per_token_vector}) {
    GlaCase c{2, 150, 4, 2, 4, 64, 128, gate};
    c.f32_out = true;
    run_gla(c);
  }
}

TEST(CudaLinearAttention, ConsecutiveCallsContinueTheSequence) {
  SUBQ_REQUIRE_GPU();
  for (LinearGate gate : {LinearGate::per_token, LinearGate::per_head, LinearGate::per_token_vector}) {
    const GlaCase c{2, 500, 4, 2, 4, 128, 64, gate, -0.2f, -0.001f};
    SCOPED_TRACE(describe(c));
    auto rng = rng_for_test();
    const GlaData d = make_gla(c, rng);
    std::vector<double> want_state;
    const auto want = reference_gla(d, want_state);
    const Tensor one_state = cuda::to_device(d.state);
    const auto one = run_gla_part(d, c, one_state, 0, c.T);
    for (int64_t t : {1, 63, 64, 200}) {
      SCOPED_TRACE("split at " + std::to_string(t));
      const Tensor dev_state = cuda::to_device(d.state);
      const auto first = run_gla_part(d, c, dev_state, 0, t);
      const auto second = run_gla_part(d, c, dev_state, t, c.T);
      const auto got = join_in_time(first, second, c.B, t, c.T, d.H * c.dv);
      expect_output_close(got, want, "o over two calls");
      expect_outputs_agree(got, one, "o over two calls against one call");
      expect_state_close(device_values(dev_state), want_state, "final state over two calls");
    }
    expect_state_close(device_values(one_state), want_state, "final state of one call");
  }
}

struct SsdCase {
  int64_t B, T, H, P, G, N;
  bool with_skip;
  float dt_hi = 0.3f, A_lo = -2.f;  // dt in [0.01, dt_hi), A in [A_lo, -0.1)
  bool f32_out = false;
};

void run_ssd(const SsdCase& c, bool split = false) {
  SCOPED_TRACE("B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
               " P=" + std::to_string(c.P) + " G=" + std::to_string(c.G) + " N=" + std::to_string(c.N) +
               (c.with_skip ? " D" : "") + (c.f32_out ? " f32 out" : "") + (split ? " split" : ""));
  auto rng = rng_for_test();
  const Tensor x = host_tensor(uniform(rng, static_cast<size_t>(c.B * c.T * c.H * c.P)), {c.B, c.T, c.H, c.P}, DType::bf16);
  const Tensor dt = random_tensor(rng, {c.B, c.T, c.H}, 0.01f, c.dt_hi);
  const Tensor A = random_tensor(rng, {c.H}, c.A_lo, -0.1f);
  const Shape bc{c.B, c.T, c.G, c.N};
  const Tensor Bm = host_tensor(uniform(rng, static_cast<size_t>(bc.numel())), bc, DType::bf16);
  const Tensor Cm = host_tensor(uniform(rng, static_cast<size_t>(bc.numel())), bc, DType::bf16);
  const Tensor D = c.with_skip ? random_tensor(rng, {c.H}) : Tensor();
  const Tensor state = random_tensor(rng, {c.B, c.H, c.N, c.P});

  std::vector<double> want_state = to_double(state);
  const auto want = reference::ssd(c.B, c.T, c.H, c.P, c.G, c.N, to_double(x), to_double(dt), to_double(A),
                                   to_double(Bm), to_double(Cm), D.defined() ? to_double(D) : std::vector<double>{},
                                   want_state);
  const Tensor dev_state = cuda::to_device(state);
  const int64_t cut_at = split ? c.T / 3 + 1 : c.T;
  std::vector<double> got;
  for (const auto& [t0, t1] : {std::pair<int64_t, int64_t>{0, cut_at}, std::pair<int64_t, int64_t>{cut_at, c.T}}) {
    if (t1 <= t0) continue;
    auto cut = [&](const Tensor& t) { return cuda::to_device(t.slice(1, t0, t1).contiguous()); };
    const Tensor y = poisoned_device_tensor(c.f32_out ? DType::f32 : DType::bf16, {c.B, t1 - t0, c.H, c.P});
    cuda::ssd(cut(x), cut(dt), cuda::to_device(A), cut(Bm), cut(Cm), to_gpu(D), dev_state, y);
    const auto part = device_values(y);
    if (got.empty()) {
      got = part;
      continue;
    }
    got = join_in_time(got, part, c.B, t0, c.T, c.H * c.P);
  }
  expect_output_close(got, want, "y");
  expect_state_close(device_values(dev_state), want_state, "final state");
}

TEST(CudaSsd, MatchesReference) {
  SUBQ_REQUIRE_GPU();
  run_ssd({2, 1000, 4, 64, 1, 128, true});  // Mamba-2 head shape, all heads share B/C
  run_ssd({1, 65, 8, 64, 2, 128, true});
  run_ssd({2, 1, 2, 128, 2, 64, false});     // decode step
  run_ssd({1, 300, 6, 64, 3, 64, true, 1.f, -4.f});  // strong decay: dt A down to -4
  run_ssd({3, 64, 4, 128, 4, 128, false});
  SsdCase f32{1, 129, 2, 64, 1, 128, true};
  f32.f32_out = true;
  run_ssd(f32);
}

TEST(CudaSsd, ConsecutiveCallsContinueTheSequence) {
  SUBQ_REQUIRE_GPU();
  run_ssd({2, 400, 4, 64, 2, 128, true}, true);
  run_ssd({1, 3, 2, 64, 1, 64, true}, true);
}

TEST(CudaLinearAttention, RejectsBadArguments) {
  SUBQ_REQUIRE_GPU();
  const Tensor q = cuda::empty(DType::bf16, {1, 8, 2, 64});
  const Tensor v = cuda::empty(DType::bf16, {1, 8, 2, 128});
  const Tensor st = cuda::empty(DType::f32, {1, 2, 64, 128});
  const Tensor o = cuda::empty(DType::bf16, {1, 8, 2, 128});
  const Tensor g = cuda::empty(DType::f32, {1, 8, 2});
  ops::LinearAttentionOptions opt;
  opt.gate = LinearGate::per_token;
  EXPECT_NO_THROW(cuda::gated_linear_attention(q, q, v, g, st, o, opt));
  cuda::synchronize();
  auto rejects = [&](const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& g_, const Tensor& s_,
                     const Tensor& o_, const ops::LinearAttentionOptions& opt_) {
    EXPECT_THROW(cuda::gated_linear_attention(q_, k_, v_, g_, s_, o_, opt_), Error);
  };
  rejects(cuda::empty(DType::f32, {1, 8, 2, 64}), q, v, g, st, o, opt);   // f32 q
  rejects(Tensor::empty(DType::bf16, {1, 8, 2, 64}), q, v, g, st, o, opt);  // host q
  rejects(q, cuda::empty(DType::bf16, {1, 8, 2, 32}), v, g, st, o, opt);  // k head dim differs
  rejects(q, q, cuda::empty(DType::bf16, {1, 7, 2, 128}), g, st, o, opt);  // v length differs
  rejects(q, cuda::empty(DType::bf16, {1, 8, 3, 64}), v, g, cuda::empty(DType::f32, {1, 3, 64, 128}),
          cuda::empty(DType::bf16, {1, 8, 3, 128}), opt);  // 2 q heads do not divide 3
  const Tensor q96 = cuda::empty(DType::bf16, {1, 8, 2, 96});
  rejects(q96, q96, v, g, cuda::empty(DType::f32, {1, 2, 96, 128}), o, opt);  // dk = 96
  rejects(q, q, v, g, cuda::empty(DType::f32, {1, 2, 128, 64}), o, opt);      // state transposed
  rejects(q, q, v, g, st, cuda::empty(DType::f16, {1, 8, 2, 128}), opt);      // f16 output
  rejects(q, q, v, g, st, cuda::empty(DType::bf16, {1, 8, 2, 64}), opt);      // o head dim
  rejects(q, q, v, cuda::empty(DType::f32, {1, 8, 1}), st, o, opt);           // gate heads
  rejects(q, q, v, g, st, v, opt);                                           // o aliases v
  ops::LinearAttentionOptions bad = opt;
  bad.gate = LinearGate::per_token_vector;
  rejects(q, q, v, g, st, o, bad);                                              // a scalar gate
  rejects(q, q, v, cuda::empty(DType::f32, {1, 8, 2, 128}), st, o, bad);        // gate over dv
  rejects(q, q, v, cuda::empty(DType::bf16, {1, 8, 2, 64}), st, o, bad);        // bf16 gate
  bad = opt;
  bad.feature_map = ops::FeatureMap::elu_plus_one;
  rejects(q, q, v, g, st, o, bad);
  bad = opt;
  bad.normalize = true;
  rejects(q, q, v, g, cuda::empty(DType::f32, {1, 2, 64, 129}), o, bad);
  bad = opt;
  bad.gate = LinearGate::none;
  rejects(q, q, v, g, st, o, bad);  // a gate tensor for gate=none
  bad.gate = LinearGate::per_head;
  rejects(q, q, v, g, st, o, bad);  // per-token shape for a per-head gate

  const Tensor x = cuda::empty(DType::bf16, {1, 8, 4, 64});
  const Tensor dt = cuda::empty(DType::f32, {1, 8, 4});
  const Tensor A = cuda::empty(DType::f32, {4});
  const Tensor Bm = cuda::empty(DType::bf16, {1, 8, 2, 128});
  const Tensor sst = cuda::empty(DType::f32, {1, 4, 128, 64});
  const Tensor y = cuda::empty(DType::bf16, {1, 8, 4, 64});
  EXPECT_NO_THROW(cuda::ssd(x, dt, A, Bm, Bm, Tensor(), sst, y));
  cuda::synchronize();
  EXPECT_THROW(cuda::ssd(x, dt, A, cuda::empty(DType::bf16, {1, 8, 3, 128}), cuda::empty(DType::bf16, {1, 8, 3, 128}),
                         Tensor(), sst, y),
               Error);  // 3 groups do not divide 4 heads
  EXPECT_THROW(cuda::ssd(x, cuda::empty(DType::bf16, {1, 8, 4}), A, Bm, Bm, Tensor(), sst, y), Error);  // bf16 dt
  EXPECT_THROW(cuda::ssd(x, dt, A, Bm, Bm, cuda::empty(DType::f32, {5}), sst, y), Error);             // D heads
  EXPECT_THROW(cuda::ssd(x, dt, A, Bm, Bm, Tensor(), cuda::empty(DType::f32, {1, 4, 64, 128}), y), Error);
  EXPECT_THROW(cuda::ssd(x, dt, A, Bm, Bm, Tensor(), sst, x), Error);  // y aliases x
  EXPECT_THROW(cuda::ssd(x, dt, A, Bm, cuda::empty(DType::bf16, {1, 8, 2, 64}), Tensor(), sst, y), Error);
}

}  // namespace
}  // namespace subq::test
