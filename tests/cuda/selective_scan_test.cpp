// Selective scan and causal conv1d on the GPU against the float64 references.
// Tolerance: f32 state, ex2.approx (relative 2^-22) and log1p/exp in f32 give relative
// errors near 1e-6 per step that can grow over T steps of a slowly decaying state;
// |err| <= 2e-4 (1 + |y|) holds with margin for T <= 2000 on these inputs, while a wrong
// chunk carry, group index or gate is off by O(1).
#include "src/ops/conv/causal_conv1d_cuda.h"
#include "src/ops/ssm/selective_scan_cuda.h"
#include "tests/cuda/cuda_test.h"
#include "tests/reference/selective_scan.h"

namespace subq::test {
namespace {

struct ScanCase {
  int64_t batch, T, D, N, G;
  bool with_skip, with_gate, with_bias, softplus;
  float dt_lo = -3.f, dt_hi = 0.5f;  // raw dt range when softplus is applied
};

struct ScanData {
  ref::ScanInputs ref;
  cuda::SelectiveScanInputs dev;
  std::vector<double> state;
  Tensor dev_state;
};

Tensor device_f32(const std::vector<float>& v, const Shape& s) { return cuda::to_device(tensor_from(v, s)); }
std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

ScanData make_scan(const ScanCase& c, std::mt19937_64& rng) {
  ScanData s;
  const size_t btd = static_cast<size_t>(c.batch * c.T * c.D);
  const size_t btgn = static_cast<size_t>(c.batch * c.T * c.G * c.N);
  // Without softplus dt is used as given, so it must be positive (a step, not a growth).
  const auto x = uniform(rng, btd), z = uniform(rng, btd, -2.f, 2.f);
  const auto dt = c.softplus ? uniform(rng, btd, c.dt_lo, c.dt_hi) : uniform(rng, btd, 0.01f, 0.3f);
  const auto A = uniform(rng, static_cast<size_t>(c.D * c.N), -2.f, -0.05f);
  const auto B = uniform(rng, btgn), C = uniform(rng, btgn);
  const auto D = uniform(rng, static_cast<size_t>(c.D));
  const auto bias = c.softplus ? uniform(rng, static_cast<size_t>(c.D), -1.f, 1.f) : uniform(rng, static_cast<size_t>(c.D), 0.f, 0.1f);
  const auto h0 = uniform(rng, static_cast<size_t>(c.batch * c.D * c.N));
  s.ref = {widen(x), widen(dt), widen(A), widen(B), widen(C), c.with_skip ? widen(D) : ref::Vec{},
           c.with_gate ? widen(z) : ref::Vec{}, c.with_bias ? widen(bias) : ref::Vec{}, c.batch, c.T, c.D, c.N, c.G,
           c.softplus};
  const Shape btd_s{c.batch, c.T, c.D};
  s.dev.x = device_f32(x, btd_s);
  s.dev.dt = device_f32(dt, btd_s);
  s.dev.A = device_f32(A, {c.D, c.N});
  s.dev.B = device_f32(B, {c.batch, c.T, c.G, c.N});
  s.dev.C = device_f32(C, {c.batch, c.T, c.G, c.N});
  if (c.with_skip) s.dev.D = device_f32(D, {c.D});
  if (c.with_gate) s.dev.z = device_f32(z, btd_s);
  if (c.with_bias) s.dev.dt_bias = device_f32(bias, {c.D});
  s.dev.dt_softplus = c.softplus;
  s.state = widen(h0);
  s.dev_state = device_f32(h0, {c.batch, c.D, c.N});
  return s;
}

void run_scan(const ScanCase& c) {
  SCOPED_TRACE("B=" + std::to_string(c.batch) + " T=" + std::to_string(c.T) + " D=" + std::to_string(c.D) +
               " N=" + std::to_string(c.N) + " G=" + std::to_string(c.G));
  auto rng = rng_for_test();
  ScanData s = make_scan(c, rng);
  const Tensor y = poisoned_device_tensor(DType::f32, {c.batch, c.T, c.D});
  cuda::selective_scan(s.dev, s.dev_state, y);
  const auto want = ref::selective_scan(s.ref, s.state);
  expect_close(device_values(y), want, 2e-4, 2e-4, "y");
  expect_close(device_values(s.dev_state), s.state, 2e-4, 2e-4, "final state");
}

TEST(CudaSelectiveScan, MatchesReferenceOnAwkwardSizes) {
  SUBQ_REQUIRE_GPU();
  run_scan({2, 1, 5, 16, 1, true, true, true, true});
  run_scan({1, 3, 64, 1, 1, true, false, false, true});     // one lane of one state
  run_scan({3, 50, 9, 2, 1, false, true, true, true});      // one lane of two states
  run_scan({2, 90, 12, 7, 3, true, true, true, true});      // two lanes of four, one state padded
  run_scan({2, 127, 37, 16, 1, true, true, true, true});
  run_scan({1, 260, 44, 12, 1, true, true, true, true});    // vector rows, padded states
  run_scan({2, 70, 30, 11, 2, true, false, true, true});    // odd N, blocks spanning two groups
  run_scan({1, 1000, 48, 16, 1, true, true, true, true});   // several time chunks
  run_scan({1, 1000, 48, 64, 4, false, true, true, false});  // groups, 16 lanes per channel
  run_scan({1, 150, 24, 128, 3, true, true, true, false});   // 32 lanes of 4 states (butterfly)
  run_scan({2, 300, 6, 256, 2, true, true, false, true});    // largest N: 32 lanes of 8 states
  run_scan({1, 2000, 20, 24, 5, true, false, true, true});   // N padded to 8 lanes of 4 states
  run_scan({2, 200, 40, 16, 1, true, true, true, true, -40.f, 40.f});  // softplus far into both tails
}

TEST(CudaSelectiveScan, ConsecutiveCallsContinueTheSequence) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const ScanCase c{2, 700, 40, 16, 2, true, true, true, true};
  ScanData s = make_scan(c, rng);
  const auto want = ref::selective_scan(s.ref, s.state);
  // The same sequence as three calls of 1, 300 and 399 steps carrying the state.
  std::vector<double> got(static_cast<size_t>(c.batch * c.T * c.D));
  int64_t t0 = 0;
  for (int64_t len : {1, 300, 399}) {
    cuda::SelectiveScanInputs part = s.dev;
    auto cut = [&](const Tensor& t) {
      if (!t.defined()) return t;
      Tensor h = cuda::to_host(t);
      Tensor piece = h.slice(1, t0, t0 + len).contiguous();
      return cuda::to_device(piece);
    };
    part.x = cut(s.dev.x);
    part.dt = cut(s.dev.dt);
    part.z = cut(s.dev.z);
    part.B = cut(s.dev.B);
    part.C = cut(s.dev.C);
    const Tensor y = poisoned_device_tensor(DType::f32, {c.batch, len, c.D});
    cuda::selective_scan(part, s.dev_state, y);
    const auto yv = device_values(y);
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t t = 0; t < len; ++t)
        for (int64_t d = 0; d < c.D; ++d)
          got[static_cast<size_t>((b * c.T + t0 + t) * c.D + d)] = yv[static_cast<size_t>((b * len + t) * c.D + d)];
    t0 += len;
  }
  expect_close(got, want, 2e-4, 2e-4, "y over three calls");
  expect_close(device_values(s.dev_state), s.state, 2e-4, 2e-4, "final state");
}

TEST(CudaSelectiveScan, RejectsBadArguments) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  ScanData s = make_scan({1, 4, 6, 4, 2, true, true, true, true}, rng);
  const Tensor y = cuda::empty(DType::f32, {1, 4, 6});
  auto bad = s.dev;
  bad.B = cuda::empty(DType::f32, {1, 4, 4, 4});  // 4 groups do not divide 6 channels
  bad.C = bad.B;
  EXPECT_THROW(cuda::selective_scan(bad, s.dev_state, y), Error);
  EXPECT_THROW(cuda::selective_scan(s.dev, cuda::empty(DType::f32, {1, 6, 5}), y), Error);
  EXPECT_THROW(cuda::selective_scan(s.dev, s.dev_state, s.dev.x), Error);
  bad = s.dev;
  bad.A = cuda::empty(DType::f32, {6, 300});
  EXPECT_THROW(cuda::selective_scan(bad, cuda::empty(DType::f32, {1, 6, 300}), y), Error);
}

void run_conv(int64_t batch, int64_t T, int64_t D, int64_t W, bool silu, bool with_bias, bool with_state) {
  SCOPED_TRACE("B=" + std::to_string(batch) + " T=" + std::to_string(T) + " D=" + std::to_string(D) +
               " W=" + std::to_string(W));
  auto rng = rng_for_test();
  const auto x = uniform(rng, static_cast<size_t>(batch * T * D));
  const auto w = uniform(rng, static_cast<size_t>(D * W));
  const auto bias = uniform(rng, static_cast<size_t>(D));
  const auto st = uniform(rng, static_cast<size_t>(batch * (W - 1) * D));
  std::vector<double> ref_state = with_state ? widen(st) : std::vector<double>(st.size(), 0.0);
  const auto want = ref::causal_conv1d(widen(x), widen(w), with_bias ? widen(bias) : ref::Vec{}, silu, ref_state,
                                       batch, T, D, W);
  const Tensor dev_state = with_state ? device_f32(st, {batch, W - 1, D}) : Tensor{};
  const Tensor y = poisoned_device_tensor(DType::f32, {batch, T, D});
  cuda::causal_conv1d(device_f32(x, {batch, T, D}), device_f32(w, {D, W}),
                      with_bias ? device_f32(bias, {D}) : Tensor{}, silu, dev_state, y);
  // f32 sums of W products: |err| <= 1e-5 (1 + |y|).
  expect_close(device_values(y), want, 1e-5, 1e-5, "y");
  if (with_state) expect_close(device_values(dev_state), ref_state, 0, 0, "state");
}

TEST(CudaConv1d, MatchesReferenceOnAwkwardSizes) {
  SUBQ_REQUIRE_GPU();
  run_conv(2, 1, 5, 4, true, true, true);     // decode step
  run_conv(1, 2, 130, 4, true, true, true);   // T shorter than the window
  run_conv(3, 17, 33, 3, false, false, true);
  run_conv(1, 1000, 200, 4, true, true, false);
  run_conv(2, 100, 7, 2, true, false, true);
  run_conv(1, 50, 9, 8, false, true, true);
}

TEST(CudaConv1d, RejectsBadArguments) {
  SUBQ_REQUIRE_GPU();
  const Tensor x = cuda::empty(DType::f32, {1, 4, 6});
  const Tensor y = cuda::empty(DType::f32, {1, 4, 6});
  EXPECT_THROW(cuda::causal_conv1d(x, cuda::empty(DType::f32, {6, 9}), Tensor{}, true, Tensor{}, y), Error);
  EXPECT_THROW(cuda::causal_conv1d(x, cuda::empty(DType::f32, {6, 4}), Tensor{}, true,
                                   cuda::empty(DType::f32, {1, 4, 6}), y),
               Error);
  EXPECT_THROW(cuda::causal_conv1d(x, cuda::empty(DType::f32, {6, 4}), Tensor{}, true, Tensor{}, x), Error);
}

}  // namespace
}  // namespace subq::test
