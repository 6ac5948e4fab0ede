// The keys one query may see under an element rule without a neighborhood (causal,
// sliding window, sinks: ElementRule's fields), as bounds: keys up to `last` (the causal
// diagonal and the keys' end) that are sinks or lie in the window [first, wlast]. The GPU
// kernels mask an edge tile with a few compares per score this way (compiled by both g++
// and nvcc, so that the CPU tests check it against ElementRule::allows).
#pragma once

#include <climits>

#include "src/core/host_device.h"

namespace subq::attn {

struct KeyRange {
  int last, sinks, first, wlast;
  SUBQ_HOST_DEVICE bool allows(int kp) const { return kp <= last && (kp < sinks || (kp >= first && kp <= wlast)); }
};

// For the query at position qp and keys 0 .. tk - 1; a window bound < 0 means none.
SUBQ_HOST_DEVICE inline KeyRange key_range(bool causal, int window_left, int window_right, int sinks, int qp,
                                           int tk) {
  const int last = causal && qp < tk - 1 ? qp : tk - 1;
  return {last, sinks, window_left >= 0 ? qp - window_left : 0, window_right >= 0 ? qp + window_right : INT_MAX};
}

}  // namespace subq::attn
