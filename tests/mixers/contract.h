// The mixer contract tests (DESIGN.md): every mixer is checked for
//   1. reference: forward over a whole sequence equals the float64 naive definition;
//   2. split invariance: forward(x[0:T]) == forward(x[0:t]); forward(x[t:T]) for several
//      t, and token by token;
//   3. state bound: state_bytes() does not grow with T (recurrent) or stays within the
//      stated bound (attention).
// A family's test builds a ContractCase and calls these.
#pragma once

#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "subq/mixer.h"
#include "tests/support/random.h"

namespace subq::test {

struct ContractCase {
  std::function<std::unique_ptr<Mixer>()> make;
  // Float64 reference: y[B, T, D] for x[B, T, D] (row-major), starting from the
  // mixer's initial (empty) state.
  std::function<std::vector<double>(const std::vector<double>& x, int64_t B, int64_t T)> reference;
  double rtol = 1e-4;
  double atol = 1e-5;
  float input_scale = 1.f;  // x ~ U(-scale, scale)
};

// Runs `mixer` over x[B, T, D] in consecutive pieces of the given lengths from a fresh
// state and returns the concatenated output (NaN-poisoned before each piece).
inline std::vector<double> run_in_pieces(const Mixer& mixer, const Tensor& x, const std::vector<int64_t>& pieces) {
  const int64_t B = x.dim(0), T = x.dim(1), D = x.dim(2);
  auto state = mixer.new_state(B);
  std::vector<double> y(static_cast<size_t>(B * T * D));
  int64_t t0 = 0;
  for (int64_t len : pieces) {
    const Tensor xs = x.slice(1, t0, t0 + len).contiguous();
    const Tensor ys = nan_tensor(Shape{B, len, D});
    mixer.forward(xs, *state, ys);
    const std::vector<double> part = to_double(ys);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < len; ++t)
        for (int64_t d = 0; d < D; ++d)
          y[static_cast<size_t>((b * T + t0 + t) * D + d)] = part[static_cast<size_t>((b * len + t) * D + d)];
    t0 += len;
  }
  EXPECT_EQ(t0, T);
  return y;
}

inline void expect_matches_reference(const ContractCase& c, int64_t B, int64_t T) {
  auto rng = rng_for_test();
  auto mixer = c.make();
  const int64_t D = mixer->d_model();
  const Tensor x = random_tensor(rng, Shape{B, T, D}, -c.input_scale, c.input_scale);
  const std::vector<double> got = run_in_pieces(*mixer, x, {T});
  expect_close(got, c.reference(to_double(x), B, T), c.rtol, c.atol,
               mixer->kind() + " vs reference, B=" + std::to_string(B) + " T=" + std::to_string(T));
}

inline void expect_split_invariant(const ContractCase& c, int64_t B, int64_t T) {
  auto rng = rng_for_test();
  auto mixer = c.make();
  const int64_t D = mixer->d_model();
  const Tensor x = random_tensor(rng, Shape{B, T, D}, -c.input_scale, c.input_scale);
  const std::vector<double> whole = run_in_pieces(*mixer, x, {T});
  std::vector<std::vector<int64_t>> splits;
  std::uniform_int_distribution<int64_t> cut(1, std::max<int64_t>(1, T - 1));
  if (T > 1) splits.push_back({cut(rng), 0});
  if (T > 2) splits.push_back({1, T - 2, 1});
  splits.push_back(std::vector<int64_t>(static_cast<size_t>(T), 1));  // token by token
  for (auto& s : splits) {
    if (s.size() == 2 && s[1] == 0) s[1] = T - s[0];
    const std::vector<double> pieces = run_in_pieces(*mixer, x, s);
    std::string desc;
    for (int64_t v : s) {
      if (!desc.empty()) desc += "+";
      desc += std::to_string(v);
    }
    if (desc.size() > 40) desc = "token by token";
    expect_close(pieces, whole, c.rtol, c.atol, mixer->kind() + " split " + desc + " vs whole");
  }
}

// Feeds T1 then more tokens; recurrent mixers must report the same state bytes.
inline void expect_constant_state(const ContractCase& c, int64_t B, int64_t T1, int64_t T2) {
  auto rng = rng_for_test();
  auto mixer = c.make();
  const int64_t D = mixer->d_model();
  auto state = mixer->new_state(B);
  const size_t initial = state->state_bytes();
  EXPECT_GT(initial, 0u);
  const Tensor x1 = random_tensor(rng, Shape{B, T1, D});
  mixer->forward(x1, *state, nan_tensor(Shape{B, T1, D}));
  const size_t after1 = state->state_bytes();
  const Tensor x2 = random_tensor(rng, Shape{B, T2, D});
  mixer->forward(x2, *state, nan_tensor(Shape{B, T2, D}));
  EXPECT_EQ(state->state_bytes(), after1) << mixer->kind() << ": state grew with T";
  EXPECT_EQ(after1, initial) << mixer->kind() << ": state size changed after the first tokens";
}

// Runs t tokens, snapshots the state, restores it into a fresh state (its tensors
// copied, so nothing is shared), and checks that both continue identically.
inline void expect_snapshot_roundtrip(const ContractCase& c, int64_t B, int64_t t, int64_t more) {
  auto rng = rng_for_test();
  auto mixer = c.make();
  const int64_t D = mixer->d_model();
  auto state = mixer->new_state(B);
  mixer->forward(random_tensor(rng, Shape{B, t, D}), *state, nan_tensor(Shape{B, t, D}));
  std::vector<Tensor> saved;
  for (const Tensor& s : state->snapshot()) saved.push_back(s.contiguous());
  auto restored = mixer->new_state(B);
  restored->restore(saved);
  EXPECT_EQ(restored->state_bytes(), state->state_bytes());
  const Tensor x = random_tensor(rng, Shape{B, more, D});
  const Tensor y1 = nan_tensor(Shape{B, more, D}), y2 = nan_tensor(Shape{B, more, D});
  mixer->forward(x, *state, y1);
  mixer->forward(x, *restored, y2);
  expect_close(to_double(y2), to_double(y1), 0, 0, mixer->kind() + " restored state vs original");
  std::vector<Tensor> wrong = saved;
  wrong.pop_back();
  EXPECT_THROW(mixer->new_state(B)->restore(wrong), Error);
}

}  // namespace subq::test
