// Next-token sampling from one row of logits: greedy, or temperature with top-k, top-p
// and min-p filtering, plus a repetition penalty over the tokens seen so far
// (SamplingParams is in subq/session.h).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "subq/session.h"

namespace subq {

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);  // throws Error on invalid params
  // Picks the next token from `logits` (vocab entries) given the tokens seen so far.
  // Uses internal scratch; not thread-safe.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<float> scratch_;
  std::vector<int32_t> order_;
};

}  // namespace subq
