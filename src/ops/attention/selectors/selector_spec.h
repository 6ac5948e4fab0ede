// A selector named by text ("window:window=512,sinks=4", "bigbird:random=3,seed=7"),
// as the mixer's sparse policy, the accuracy harness and the CLI take it, and the one
// function that builds its BlockMask.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/ops/attention/block_mask.h"
#include "src/ops/attention/flash.h"
#include "src/ops/attention/selectors/static_selectors.h"

namespace subq::attn {

struct SelectorSpec {
  // dense | window | bigbird | power | neighborhood | moba | flexprefill | xattention | hip
  std::string kind = "dense";
  bool causal = true;
  int64_t block = 64;  // query and key block size
  // window (with sinks: StreamingLLM)
  int64_t window = 256;
  int64_t sinks = 0;
  // bigbird
  int64_t global_blocks = 1, window_blocks = 1, random_blocks = 2;
  uint64_t seed = 0;
  // power
  int64_t local_blocks = 1, sink_blocks = 1;
  // neighborhood (grid from the spec; its product must equal the sequence length)
  Neighborhood nbhd;
  // dynamic selectors
  int64_t top_k = 4;        // moba, hip: key blocks kept per query block
  double gamma = 0.9;       // flexprefill: cumulative attention mass kept
  double tau = 0.1;         // flexprefill: JS-divergence threshold for the query-aware pattern
  double threshold = 0.9;   // xattention: cumulative antidiagonal score kept
  int64_t stride = 8;       // xattention: antidiagonal stride

  // True for the static window policies whose KV cache can be bounded.
  bool bounds_cache() const { return kind == "window"; }
  bool is_dense() const { return kind == "dense"; }
  bool needs_qk() const;  // dynamic selectors read Q and K
};

// Parses "kind" or "kind:key=value,key=value". Throws Error naming the unknown kind or
// key, or the bad value.
SelectorSpec parse_selector(const std::string& text);
// The canonical text form (parse_selector(to_string(s)) == s for the fields of s.kind).
std::string to_string(const SelectorSpec& s);
// Every selector kind this build knows.
std::vector<std::string> selector_kinds();

// Builds the mask of `spec` for q rows at q_offset against kv_len keys. Dynamic
// selectors read the queries and keys of `qk` (its q, k pointers, strides, heads and
// batch) and return per-(batch, head) masks; static ones ignore qk.
BlockMask build_mask(const SelectorSpec& spec, const MaskGeometry& geometry, const AttentionArgs& qk);

}  // namespace subq::attn
