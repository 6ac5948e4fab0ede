// Mamba-2 SSD through the gated linear attention kernel against the float64 state-space
// form (tests/reference/linear_attention.h: reference::ssd), with groups, D skip, a
// random initial state, and both short (recurrent) and long (chunked) inputs.
// Tolerance: f32 accumulation over T <= 300 tokens, N = 32..128: rtol 2e-3 and atol
// 2e-4 of max|reference|.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "src/ops/linear/ssd.h"
#include "tests/reference/linear_attention.h"
#include "tests/support/random.h"

namespace subq::test {
namespace {

void check_ssd(int64_t B, int64_t T, int64_t H, int64_t P, int64_t G, int64_t N, bool with_D, int64_t chunk) {
  SCOPED_TRACE("B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) + " P=" +
               std::to_string(P) + " G=" + std::to_string(G) + " N=" + std::to_string(N));
  auto rng = rng_for_test();
  const Tensor x = random_tensor(rng, Shape{B, T, H, P});
  const Tensor dt = random_tensor(rng, Shape{B, T, H}, 0.001f, 0.5f);
  const Tensor A = random_tensor(rng, Shape{H}, -8.f, -0.5f);
  const Tensor Bm = random_tensor(rng, Shape{B, T, G, N}), Cm = random_tensor(rng, Shape{B, T, G, N});
  const Tensor D = with_D ? random_tensor(rng, Shape{H}) : Tensor();
  const Tensor state = random_tensor(rng, Shape{B, H, N, P});
  std::vector<double> ref_state = to_double(state);
  const auto want = reference::ssd(B, T, H, P, G, N, to_double(x), to_double(dt), to_double(A), to_double(Bm),
                                   to_double(Cm), with_D ? to_double(D) : std::vector<double>{}, ref_state);
  double scale = 1e-30, state_scale = 1e-30;
  for (double v : want) scale = std::max(scale, std::abs(v));
  for (double v : ref_state) state_scale = std::max(state_scale, std::abs(v));
  const Tensor y = nan_tensor(Shape{B, T, H, P});
  ops::ssd(x, dt, A, Bm, Cm, D, state, y, chunk);
  expect_close(y, want, 2e-3, 2e-4 * scale, "ssd output");
  expect_close(state, ref_state, 2e-3, 2e-4 * state_scale, "ssd final state");
}

TEST(Ssd, MatchesStateSpaceForm) {
  check_ssd(2, 1, 4, 16, 1, 32, true, 64);
  check_ssd(2, 5, 4, 16, 2, 32, true, 64);
  check_ssd(1, 65, 8, 24, 2, 64, true, 32);
  check_ssd(2, 300, 4, 64, 4, 128, false, 64);
  check_ssd(1, 129, 3, 33, 3, 17, true, 128);
}

TEST(Ssd, RejectsBadArguments) {
  auto rng = rng_for_test();
  const Tensor x = random_tensor(rng, Shape{1, 4, 4, 8}), dt = random_tensor(rng, Shape{1, 4, 4}, 0.f, 1.f);
  const Tensor Bm = random_tensor(rng, Shape{1, 4, 3, 8});  // 3 groups do not divide 4 heads
  const Tensor state = Tensor::zeros(DType::f32, Shape{1, 4, 8, 8});
  EXPECT_THROW(ops::ssd(x, dt, random_tensor(rng, Shape{4}, -1.f, 0.f), Bm, Bm, Tensor(), state,
                        nan_tensor(Shape{1, 4, 4, 8})),
               Error);
  EXPECT_THROW(ops::ssd(x, dt, random_tensor(rng, Shape{3}, -1.f, 0.f), random_tensor(rng, Shape{1, 4, 2, 8}),
                        random_tensor(rng, Shape{1, 4, 2, 8}), Tensor(), state, nan_tensor(Shape{1, 4, 4, 8})),
               Error);
}

}  // namespace
}  // namespace subq::test
