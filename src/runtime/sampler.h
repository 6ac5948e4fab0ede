// Next-token sampling from one row of logits: greedy, or temperature with top-k, top-p
// and min-p filtering, plus a repetition penalty over the tokens seen so far.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace subq {

struct SamplingParams {
  float temperature = 0.f;          // 0: greedy (argmax)
  int64_t top_k = 0;                // 0: off
  float top_p = 1.f;                // 1: off; keep the smallest prefix with mass >= top_p
  float min_p = 0.f;                // 0: off; drop tokens with p < min_p * p_max
  float repetition_penalty = 1.f;   // 1: off; as transformers: logit / r if > 0 else logit * r
  uint64_t seed = 0;
};

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
