#include "src/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "subq/tensor.h"

namespace subq {

Sampler::Sampler(const SamplingParams& params) : p_(params), rng_(params.seed) {
  if (!(p_.temperature >= 0.f) || !std::isfinite(p_.temperature))
    throw Error("sampling: temperature must be >= 0, found " + std::to_string(p_.temperature));
  if (p_.top_k < 0) throw Error("sampling: top-k must be >= 0, found " + std::to_string(p_.top_k));
  if (!(p_.top_p > 0.f && p_.top_p <= 1.f)) throw Error("sampling: top-p must be in (0, 1], found " + std::to_string(p_.top_p));
  if (!(p_.min_p >= 0.f && p_.min_p <= 1.f)) throw Error("sampling: min-p must be in [0, 1], found " + std::to_string(p_.min_p));
  if (!(p_.repetition_penalty > 0.f) || !std::isfinite(p_.repetition_penalty))
    throw Error("sampling: repetition penalty must be > 0, found " + std::to_string(p_.repetition_penalty));
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const size_t V = logits.size();
  if (V == 0) throw Error("sampling: empty logits");
  scratch_.assign(logits.begin(), logits.end());
  if (p_.repetition_penalty != 1.f) {
    for (int32_t t : history) {
      if (t < 0 || static_cast<size_t>(t) >= V) continue;
      float& l = scratch_[static_cast<size_t>(t)];
      // Applied once per distinct token: a repeated history entry must not compound.
      const float orig = logits[static_cast<size_t>(t)];
      l = orig > 0 ? orig / p_.repetition_penalty : orig * p_.repetition_penalty;
    }
  }
  for (float l : scratch_)
    if (std::isnan(l)) throw Error("sampling: logits contain NaN");
  if (p_.temperature == 0.f)
    return static_cast<int32_t>(std::max_element(scratch_.begin(), scratch_.end()) - scratch_.begin());

  // Sort candidates by logit (descending; ties by id so results are reproducible).
  order_.resize(V);
  std::iota(order_.begin(), order_.end(), 0);
  size_t keep = V;
  if (p_.top_k > 0) keep = std::min(keep, static_cast<size_t>(p_.top_k));
  auto by_logit = [&](int32_t a, int32_t b) {
    const float la = scratch_[static_cast<size_t>(a)], lb = scratch_[static_cast<size_t>(b)];
    return la != lb ? la > lb : a < b;
  };
  std::partial_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(keep), order_.end(), by_logit);
  order_.resize(keep);

  // Softmax over the kept candidates at the given temperature, in double.
  const double mx = scratch_[static_cast<size_t>(order_[0])];
  std::vector<double> prob(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    prob[i] = std::exp((scratch_[static_cast<size_t>(order_[i])] - mx) / p_.temperature);
    sum += prob[i];
  }
  for (double& q : prob) q /= sum;
  if (p_.min_p > 0.f) {
    const double floor = p_.min_p * prob[0];
    while (keep > 1 && prob[keep - 1] < floor) --keep;
  }
  if (p_.top_p < 1.f) {
    double mass = 0;
    size_t n = 0;
    while (n < keep) {
      mass += prob[n++];
      if (mass >= p_.top_p) break;
    }
    keep = n;
  }
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += prob[i];
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (size_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r < 0) return order_[i];
  }
  return order_[keep - 1];
}

}  // namespace subq
