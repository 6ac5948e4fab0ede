// Runs the registered benchmark cases and reports them (terminal table, JSON, SVG).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace subq::bench {

struct RunOptions {
  std::string only;           // comma-separated substrings of case names to run (empty: all)
  std::vector<int64_t> seq;   // overrides each case's sequence lengths (empty: the case's own)
  bool all = false;           // include cases outside the default sweep
  std::string json_path;      // empty: no JSON
  std::string plot_path;      // empty: no SVG
  double min_time_s = 0.25;   // per (case, T): repeat until this much time ...
  int min_reps = 3;           // ... and at least this many repetitions
};

// Prints the case names (with family, shape and default sequence lengths).
void list_cases(const RunOptions& opts);
// Returns the number of cases that failed (threw); 0 on success.
int run_benchmarks(const RunOptions& opts);

}  // namespace subq::bench
