// Writers for the files subq produces: safetensors (saved session states) and .npy
// (logits for checking against other implementations). Both write to a temporary file
// and rename it into place, so a failed write never leaves a truncated file behind.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "subq/tensor.h"

namespace subq::io {

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata);
// A float32 C-order .npy array of `shape` from `data` (rows x cols, ...).
void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

}  // namespace subq::io
