// Where a query's neighborhood starts along one grid dimension, as NATTEN defines
// neighborhood attention (NA, dilated NA, strided GNA, causal NA). One definition for the
// CPU selectors and the GPU executor's element rule (compiled by both g++ and nvcc).
//
// Dilation splits the L positions into `dil` interleaved groups (c mod dil); everything
// below happens inside the query's group, at index c / dil of its group_len positions.
// Stride cuts the group into runs of `s` queries that share one window, the window of the
// run's leader: the centre query (the right one of two when s is even), or for a causal
// dimension the last one; a leader past the group's end is its last position.
//   non-causal: the `k` positions centred on the leader, shifted inward at the borders
//               (so every query sees exactly k keys);
//   causal:     the positions in (leader - k, query]: windows end at the query itself.
// Returns the first key coordinate; keys are start + t * dil for t < k (causal: up to c).
#pragma once

#include <cstdint>

#include "src/core/host_device.h"

namespace subq::attn {

template <class Int>
SUBQ_HOST_DEVICE inline Int neighborhood_window_start(Int L, Int k, Int dil, Int s, bool causal, Int c) {
  const Int group = c % dil;
  const Int group_len = (L - group + dil - 1) / dil;
  const Int at = c / dil;
  const Int last = group_len - 1;
  Int leader = at / s * s + (causal ? s - 1 : s / 2);
  if (leader > last) leader = last;
  Int start = causal ? leader - k + 1 : leader - k / 2;
  if (!causal && start > group_len - k) start = group_len - k;
  if (start < 0) start = 0;
  return group + start * dil;
}

}  // namespace subq::attn
