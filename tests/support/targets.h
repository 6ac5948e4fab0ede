// Runs a test body once per SIMD target compiled in and supported by this CPU (AVX-512,
// AVX2, portable EMU128), so the fallbacks are tested on every machine.
#pragma once

#include <gtest/gtest.h>

#include "hwy/targets.h"

namespace subq::test {

template <class F>
void for_each_target(F&& body) {
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    body();
  }
  hwy::SetSupportedTargetsForTest(0);
}

}  // namespace subq::test
