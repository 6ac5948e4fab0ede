// Checks shared by the selectors that reason in whole blocks.
#pragma once

#include <string>

#include "src/ops/attention/selectors/static_selectors.h"
#include "subq/tensor.h"

namespace subq::attn {

// Block-level selectors number query and key blocks on one grid: equal block sizes and
// a query offset on a block boundary.
inline void check_aligned_blocks(const MaskGeometry& g, const char* who) {
  if (g.q_block != g.k_block || g.q_block < 1)
    throw Error(std::string(who) + ": needs q_block == k_block, found " + std::to_string(g.q_block) + " and " +
                std::to_string(g.k_block));
  if (g.q_offset % g.q_block != 0)
    throw Error(std::string(who) + ": q_offset must be a multiple of the block size " + std::to_string(g.q_block) +
                ", found " + std::to_string(g.q_offset));
  if (g.key_positions) throw Error(std::string(who) + ": key_positions are not supported");
}

}  // namespace subq::attn
