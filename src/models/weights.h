// Helpers shared by the architecture files: fetch a checkpoint tensor with the shape the
// config implies, as stored (matrices) or widened to f32 (norms, small vectors).
#pragma once

#include <string>

#include "src/models/decoder.h"
#include "subq/io.h"

namespace subq::models {

// Any float dtype, shape checked; used in place (zero-copy from the mapping).
Tensor matrix(const Checkpoint& w, const std::string& name, int64_t rows, int64_t cols);
// Any float dtype, shape checked, copied to an owning f32 tensor.
Tensor f32(const Checkpoint& w, const std::string& name, const Shape& shape);
// f32 of `name` if the checkpoint has it, else an undefined tensor.
Tensor optional_f32(const Checkpoint& w, const std::string& name, const Shape& shape);
Norm rms_norm(const Checkpoint& w, const std::string& name, int64_t dim, double eps);
// The embedding and the head: lm_head.weight, or the embedding when tied
// (tie_word_embeddings, or the architecture's default when the config omits it).
void embedding_and_head(const Config& c, const Checkpoint& w, const std::string& embedding_name, bool tied_default,
                        DecoderSpec& spec);
// A config integer that must be positive, with a message naming the field.
int64_t positive(const Config& c, const std::string& field);
// The activation named by config field `field` (or `fallback` when absent); an unknown
// name is an Error naming the field.
Activation activation(const Config& c, const std::string& field, const std::string& fallback);
// Mamba's time-step rank: a positive integer or "auto" (absent too) = ceil(d_model / 16).
int64_t dt_rank(const Config& c, const std::string& field, int64_t d_model);

}  // namespace subq::models
