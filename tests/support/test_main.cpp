// gtest main: prints the random seed so any failure can be replayed with SUBQ_TEST_SEED.
#include <gtest/gtest.h>

#include <cstdio>

#include "tests/support/random.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  std::printf("subq tests: seed %llu (set SUBQ_TEST_SEED to replay)\n",
              static_cast<unsigned long long>(subq::test::base_seed()));
  return RUN_ALL_TESTS();
}
