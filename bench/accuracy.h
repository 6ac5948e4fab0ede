// The sparse-attention accuracy harness: for every selector setting, how much of the
// dense attention it keeps. Reported per input:
//   density    listed block pairs / the dense causal block pairs;
//   recall     share of the dense softmax mass inside the selector's element mask,
//              averaged over sampled query rows of every head;
//   rel err    ||O_sparse - O_dense||_F / ||O_dense||_F over all outputs;
//   needles    (synthetic input) share of planted (query, key) pairs the mask keeps.
// Inputs: synthetic structured Q/K/V (local decay, attention sinks, vertical lines,
// slash lines, planted needles), and optionally Q/K/V read from .npy files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "subq/tensor.h"

namespace subq::bench {

struct AccuracyOptions {
  int64_t seq = 2048;       // synthetic sequence length
  int64_t heads = 4;        // synthetic query heads (key/value heads: heads / 2)
  int64_t head_dim = 64;
  uint64_t seed = 1;
  std::vector<std::string> selectors;  // selector specs; empty: the default sweep
  // Optional captured tensors, each .npy float32/float64 [T, H, Dh] (k, v may have fewer
  // heads, dividing q's). All three or none.
  std::string q_path, k_path, v_path;
  int64_t sampled_rows = 256;  // query rows per head used for the recall estimate
};

// The selector settings scored when none are given.
std::vector<std::string> default_accuracy_sweep();

// Reads a little-endian float32/float64 C-order .npy file into an f32 tensor. Throws Error
// naming the file on a bad magic, header, dtype, shape or a truncated payload.
Tensor read_npy(const std::string& path);

// Prints the table to stdout; returns 0, or throws Error on bad options or files.
int run_accuracy(const AccuracyOptions& options);

}  // namespace subq::bench
