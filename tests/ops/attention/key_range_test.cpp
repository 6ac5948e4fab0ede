// KeyRange, the bounds form of a causal / window / sinks rule that the GPU kernels mask
// edge tiles with, against ElementRule::allows pair by pair (the rule's definition) on
// random rules, queries and key counts.
#include <gtest/gtest.h>

#include <random>

#include "src/ops/attention/block_mask.h"
#include "src/ops/attention/key_range.h"
#include "tests/support/random.h"

namespace subq::test {
namespace {

TEST(KeyRange, EqualsTheElementRule) {
  auto rng = rng_for_test();
  std::uniform_int_distribution<int> coin(0, 1), bound(-1, 40), sinks(0, 12), qpos(0, 150), keys(1, 160);
  int64_t allowed = 0, pairs = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    attn::ElementRule rule;
    rule.causal = coin(rng) == 1;
    rule.window_left = coin(rng) ? bound(rng) : -1;
    rule.window_right = coin(rng) ? bound(rng) : -1;
    rule.sinks = coin(rng) ? sinks(rng) : 0;
    const int qp = qpos(rng), tk = keys(rng);
    const attn::KeyRange range = attn::key_range(rule.causal, static_cast<int>(rule.window_left),
                                                 static_cast<int>(rule.window_right), static_cast<int>(rule.sinks), qp, tk);
    for (int kp = 0; kp < tk + 3; ++kp) {
      const bool want = kp < tk && rule.allows(qp, kp);
      allowed += want;
      ++pairs;
      ASSERT_EQ(range.allows(kp), want) << "causal " << rule.causal << " window [" << rule.window_left << ", "
                                        << rule.window_right << "] sinks " << rule.sinks << ": query " << qp
                                        << ", key " << kp << " of " << tk;
    }
  }
  // Both outcomes were drawn often: the comparison is not vacuous.
  EXPECT_GT(allowed, pairs / 10);
  EXPECT_LT(allowed, pairs * 9 / 10);
}

}  // namespace
}  // namespace subq::test
