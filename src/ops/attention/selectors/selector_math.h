// Pieces shared by the dynamic selectors: block-pooled queries and keys, dot products,
// keep-until-mass selection and assembling per-row block lists into a BlockMask.
#pragma once

#include <cstdint>
#include <vector>

#include "src/ops/attention/block_mask.h"
#include "src/ops/attention/flash.h"
#include "src/ops/attention/selectors/static_selectors.h"

namespace subq::attn {

// Mean of each block of `rows` rows (the last block may be short) for every (batch,
// head): out[((b * heads + h) * blocks + blk) * dim + x].
std::vector<float> block_means(const float* x, int64_t batch_stride, int64_t row_stride, int64_t batch, int64_t rows,
                               int64_t heads, int64_t dim, int64_t block);

float dot(const float* a, const float* b, int64_t n);

// out[i] = exp(x[i] * scale - shift) for i < n (out may be null); returns their sum.
double exp_shifted(const float* x, int64_t n, float scale, float shift, float* out);

// Indices of `scores` in decreasing order, taken until their normalised sum reaches
// `mass` (scores are non-negative weights). At least one index when any exists.
std::vector<int32_t> keep_until_mass(const std::vector<double>& scores, double mass);

// Checks XAttention's parameters: a stride dividing the block, a threshold in (0, 1].
void check_xattention_parameters(int64_t block, double threshold, int64_t stride);

// Checks FlexPrefill's gamma: in (0, 1].
void check_flexprefill_parameters(double gamma);

// Checks a dynamic selector's inputs: block geometry, q/k pointers and sizes.
void check_dynamic_inputs(const MaskGeometry& g, const AttentionArgs& qk, const char* who);

// A causal per-(batch, head) mask from rows[(b * heads + h) * nqb + qb] (any order,
// duplicates allowed); the diagonal block of every row is added.
BlockMask assemble_rows(const MaskGeometry& g, int64_t batch, int64_t heads, std::vector<std::vector<int32_t>>& rows);

}  // namespace subq::attn
