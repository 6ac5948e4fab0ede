// Which (query, key) pairs an attention computes. Two levels:
//   * block level: for each (batch, head, query block) a sorted list of key blocks (CSR).
//     The executor visits exactly these blocks and nothing else.
//   * element level: an ElementRule (causal, sliding window with sinks, neighborhood
//     windows on a grid) applied inside the visited blocks.
// A pair (i, j) is attended iff j's block is listed for i's block AND the rule allows it.
// Query row i has absolute position q_offset + i; key slot j has position j, or
// key_positions[j] when the keys come from an evicting cache (sorted ascending).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

namespace subq::attn {

// Neighborhood attention windows (NA / GNA, NATTEN's clamped borders) on a row-major grid
// of up to 3 dimensions (last dimension fastest). Per dimension: kernel size, dilation,
// stride (runs of `stride` queries in a dilation group share their leader's window) and
// causal (windows end at the query); neighborhood_window.h has the definition.
struct Neighborhood {
  int ndim = 1;
  std::array<int64_t, 3> grid{1, 1, 1};
  std::array<int64_t, 3> kernel{1, 1, 1};
  std::array<int64_t, 3> dilation{1, 1, 1};
  std::array<int64_t, 3> stride{1, 1, 1};
  std::array<bool, 3> causal{false, false, false};

  int64_t tokens() const;
  // Throws Error unless every dimension has kernel * dilation <= grid and stride in
  // [1, kernel].
  void validate() const;
  // First window index along dimension `dim` for query coordinate c (keys are
  // start + t * dilation, t < kernel, clipped to c itself when causal).
  int64_t window_start(int dim, int64_t c) const;
  bool allows(int64_t q, int64_t k) const;
};

struct ElementRule {
  bool causal = false;
  int64_t window_left = -1;   // >= 0: key position >= query position - window_left
  int64_t window_right = -1;  // >= 0: key position <= query position + window_right
  int64_t sinks = 0;          // keys at positions < sinks are exempt from the window
  bool neighborhood = false;  // also require nbhd.allows(q, k)
  Neighborhood nbhd;

  bool allows(int64_t q_pos, int64_t k_pos) const {
    if (causal && k_pos > q_pos) return false;
    if (k_pos >= sinks) {
      if (window_left >= 0 && k_pos < q_pos - window_left) return false;
      if (window_right >= 0 && k_pos > q_pos + window_right) return false;
    }
    return !neighborhood || nbhd.allows(q_pos, k_pos);
  }
  // True only if every pair of the position ranges [q0, q1] x [k0, k1] is allowed, so the
  // executor may skip the per-element test (false is always safe).
  bool covers(int64_t q0, int64_t q1, int64_t k0, int64_t k1) const;
  // For the query at q_pos and key positions 0..k_end-1: the allowed keys are those in
  // [lo, hi] or at most sink_hi (each range possibly empty), as allows() would say
  // element by element. False where the rule has no such form (multi-dimensional or
  // dilated neighborhoods; sinks beside a neighborhood); then test each element.
  bool key_ranges(int64_t q_pos, int64_t k_end, int64_t& lo, int64_t& hi, int64_t& sink_hi) const;
};

struct BlockMask {
  int64_t batch = 1;  // 1: shared by every batch element
  int64_t heads = 1;  // 1: shared by every head
  int64_t q_len = 0, kv_len = 0;
  int64_t q_block = 64, k_block = 64;
  int64_t q_offset = 0;
  ElementRule rule;
  std::vector<int64_t> row_start;  // batch * heads * num_q_blocks() + 1 entries
  std::vector<int32_t> key_blocks;

  int64_t num_q_blocks() const { return (q_len + q_block - 1) / q_block; }
  int64_t num_k_blocks() const { return (kv_len + k_block - 1) / k_block; }
  int64_t row_index(int64_t b, int64_t h, int64_t qb) const {
    return ((batch == 1 ? 0 : b) * heads + (heads == 1 ? 0 : h)) * num_q_blocks() + qb;
  }
  std::span<const int32_t> row(int64_t b, int64_t h, int64_t qb) const {
    const int64_t r = row_index(b, h, qb);
    return {key_blocks.data() + row_start[static_cast<size_t>(r)],
            static_cast<size_t>(row_start[static_cast<size_t>(r) + 1] - row_start[static_cast<size_t>(r)])};
  }
  // Listed block pairs over the pairs a dense mask with the same causality would list.
  double density() const;
  // Throws Error unless the CSR arrays are consistent and every row is sorted, unique
  // and in range.
  void validate() const;
};

// Appends rows in order; each row's blocks are sorted and deduplicated on add.
class BlockMaskBuilder {
 public:
  BlockMaskBuilder(int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len, int64_t q_block, int64_t k_block,
                   int64_t q_offset, const ElementRule& rule);
  void add_row(std::vector<int32_t>& blocks);
  BlockMask finish();

 private:
  BlockMask m_;
};

// Every key block (non-causal) or every key block at or below each query block's last
// position (causal): the dense attention as a BlockMask.
BlockMask dense_mask(int64_t q_len, int64_t kv_len, bool causal, int64_t q_offset = 0, int64_t q_block = 64,
                     int64_t k_block = 64, const int32_t* key_positions = nullptr);

// Dense pairs listed by a causal mask of these sizes (the density denominator).
int64_t dense_block_pairs(const BlockMask& m);

}  // namespace subq::attn
