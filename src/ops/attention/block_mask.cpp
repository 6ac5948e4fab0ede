#include "src/ops/attention/block_mask.h"

#include <algorithm>
#include <string>

#include "src/ops/attention/neighborhood_window.h"
#include "subq/tensor.h"

namespace subq::attn {

int64_t Neighborhood::tokens() const {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= grid[static_cast<size_t>(d)];
  return n;
}

void Neighborhood::validate() const {
  if (ndim < 1 || ndim > 3) throw Error("neighborhood: ndim must be 1, 2 or 3, found " + std::to_string(ndim));
  for (int d = 0; d < ndim; ++d) {
    const size_t i = static_cast<size_t>(d);
    const std::string dim = "neighborhood dim " + std::to_string(d) + ": ";
    if (grid[i] < 1 || kernel[i] < 1 || dilation[i] < 1)
      throw Error(dim + "grid, kernel and dilation must be >= 1");
    if (kernel[i] * dilation[i] > grid[i])
      throw Error(dim + "kernel * dilation must be <= grid size " + std::to_string(grid[i]) + ", found " +
                  std::to_string(kernel[i] * dilation[i]));
    if (stride[i] < 1 || stride[i] > kernel[i])
      throw Error(dim + "stride must be in [1, kernel], found " + std::to_string(stride[i]));
  }
}

int64_t Neighborhood::window_start(int dim, int64_t c) const {
  const size_t i = static_cast<size_t>(dim);
  return neighborhood_window_start<int64_t>(grid[i], kernel[i], dilation[i], stride[i], causal[i], c);
}

bool Neighborhood::allows(int64_t q, int64_t k) const {
  for (int d = ndim - 1; d >= 0; --d) {
    const size_t i = static_cast<size_t>(d);
    const int64_t qc = q % grid[i], kc = k % grid[i];
    q /= grid[i];
    k /= grid[i];
    const int64_t start = window_start(d, qc);
    const int64_t off = kc - start;
    if (off < 0 || off % dilation[i] != 0 || off / dilation[i] >= kernel[i]) return false;
    if (causal[i] && kc > qc) return false;
  }
  return true;
}

bool ElementRule::covers(int64_t q0, int64_t q1, int64_t k0, int64_t k1) const {
  if (neighborhood) {
    // 1-D, undilated, unstrided windows start at a non-decreasing index, so the
    // tile is inside every window iff it is inside the first query's end and the last
    // query's start (and, causally, not after the first query).
    if (nbhd.ndim != 1 || nbhd.dilation[0] != 1 || nbhd.stride[0] != 1) return false;
    const int64_t first_end = nbhd.causal[0] ? q0 : nbhd.window_start(0, q0) + nbhd.kernel[0] - 1;
    if (k0 < nbhd.window_start(0, q1) || k1 > first_end) return false;
  }
  if (causal && k1 > q0) return false;
  if (k1 >= sinks) {
    if (window_left >= 0 && k0 < q1 - window_left) return false;
    if (window_right >= 0 && k1 > q0 + window_right) return false;
  }
  return true;
}

bool ElementRule::key_ranges(int64_t q_pos, int64_t k_end, int64_t& lo, int64_t& hi, int64_t& sink_hi) const {
  const bool windowed = window_left >= 0 || window_right >= 0;
  lo = 0;
  hi = k_end - 1;
  if (causal) hi = std::min(hi, q_pos);
  // Sinks are exempt from the window only: they keep the causal bound.
  sink_hi = windowed && sinks > 0 ? std::min(sinks - 1, hi) : -1;
  if (window_left >= 0) lo = std::max(lo, q_pos - window_left);
  if (window_right >= 0) hi = std::min(hi, q_pos + window_right);
  if (neighborhood) {
    // allows() compares coordinates modulo the grid; inside one grid a 1-D undilated
    // window is the interval [start, start + kernel - 1].
    if (nbhd.ndim != 1 || nbhd.dilation[0] != 1 || sink_hi >= 0 || q_pos >= nbhd.grid[0] || k_end > nbhd.grid[0])
      return false;
    const int64_t start = nbhd.window_start(0, q_pos);
    lo = std::max(lo, start);
    hi = std::min(hi, start + nbhd.kernel[0] - 1);
    if (nbhd.causal[0]) hi = std::min(hi, q_pos);
  }
  return true;
}

double BlockMask::density() const {
  const int64_t denom = dense_block_pairs(*this);
  return denom == 0 ? 0.0 : static_cast<double>(key_blocks.size()) / static_cast<double>(denom);
}

int64_t dense_block_pairs(const BlockMask& m) {
  int64_t pairs = 0;
  const int64_t nkb = m.num_k_blocks();
  for (int64_t qb = 0; qb < m.num_q_blocks(); ++qb) {
    if (!m.rule.causal) {
      pairs += nkb;
      continue;
    }
    const int64_t last_q = m.q_offset + std::min(m.q_len, (qb + 1) * m.q_block) - 1;
    pairs += std::min(nkb, last_q / m.k_block + 1);
  }
  return pairs * m.batch * m.heads;
}

void BlockMask::validate() const {
  if (batch < 1 || heads < 1 || q_len < 0 || kv_len < 0 || q_block < 1 || k_block < 1 || q_offset < 0)
    throw Error("BlockMask: sizes must be positive (batch " + std::to_string(batch) + ", heads " +
                std::to_string(heads) + ", q_block " + std::to_string(q_block) + ", k_block " +
                std::to_string(k_block) + ")");
  const size_t rows = static_cast<size_t>(batch * heads * num_q_blocks());
  if (row_start.size() != rows + 1 || row_start.front() != 0 ||
      row_start.back() != static_cast<int64_t>(key_blocks.size()))
    throw Error("BlockMask: row_start must have " + std::to_string(rows + 1) + " entries from 0 to " +
                std::to_string(key_blocks.size()) + ", found " + std::to_string(row_start.size()) + " entries");
  const int64_t nkb = num_k_blocks();
  for (size_t r = 0; r < rows; ++r) {
    if (row_start[r + 1] < row_start[r]) throw Error("BlockMask: row_start decreases at row " + std::to_string(r));
    for (int64_t i = row_start[r]; i < row_start[r + 1]; ++i) {
      const int32_t kb = key_blocks[static_cast<size_t>(i)];
      if (kb < 0 || kb >= nkb)
        throw Error("BlockMask: row " + std::to_string(r) + " lists key block " + std::to_string(kb) +
                    ", expected [0, " + std::to_string(nkb) + ")");
      if (i > row_start[r] && kb <= key_blocks[static_cast<size_t>(i - 1)])
        throw Error("BlockMask: row " + std::to_string(r) + " is not sorted and unique");
    }
  }
  if (rule.neighborhood) rule.nbhd.validate();
}

BlockMaskBuilder::BlockMaskBuilder(int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len, int64_t q_block,
                                   int64_t k_block, int64_t q_offset, const ElementRule& rule) {
  if (q_block < 1 || k_block < 1)
    throw Error("BlockMask: block sizes must be >= 1, found q_block " + std::to_string(q_block) + ", k_block " +
                std::to_string(k_block));
  m_.batch = batch;
  m_.heads = heads;
  m_.q_len = q_len;
  m_.kv_len = kv_len;
  m_.q_block = q_block;
  m_.k_block = k_block;
  m_.q_offset = q_offset;
  m_.rule = rule;
  m_.row_start.reserve(static_cast<size_t>(batch * heads * m_.num_q_blocks() + 1));
  m_.row_start.push_back(0);
}

void BlockMaskBuilder::add_row(std::vector<int32_t>& blocks) {
  std::sort(blocks.begin(), blocks.end());
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  m_.key_blocks.insert(m_.key_blocks.end(), blocks.begin(), blocks.end());
  m_.row_start.push_back(static_cast<int64_t>(m_.key_blocks.size()));
}

BlockMask BlockMaskBuilder::finish() {
  m_.validate();
  return std::move(m_);
}

BlockMask dense_mask(int64_t q_len, int64_t kv_len, bool causal, int64_t q_offset, int64_t q_block, int64_t k_block,
                     const int32_t* key_positions) {
  ElementRule rule;
  rule.causal = causal;
  BlockMaskBuilder b(1, 1, q_len, kv_len, q_block, k_block, q_offset, rule);
  const int64_t nkb = (kv_len + k_block - 1) / k_block;
  std::vector<int32_t> row;
  for (int64_t qb = 0; qb * q_block < q_len; ++qb) {
    row.clear();
    const int64_t last_q = q_offset + std::min(q_len, (qb + 1) * q_block) - 1;
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t first_k = key_positions ? key_positions[kb * k_block] : kb * k_block;
      if (causal && first_k > last_q) break;
      row.push_back(static_cast<int32_t>(kb));
    }
    b.add_row(row);
  }
  return b.finish();
}

}  // namespace subq::attn
