#include "src/ops/ssm/scan_orders.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace subq::ops {
namespace {

void check_grid(int64_t height, int64_t width, const char* who) {
  if (height < 1 || width < 1)
    throw Error(std::string(who) + ": grid must be at least 1 x 1, found " + std::to_string(height) + " x " +
                std::to_string(width));
}

std::vector<int64_t> reversed(std::vector<int64_t> p) {
  std::reverse(p.begin(), p.end());
  return p;
}

std::vector<int64_t> row_major(int64_t H, int64_t W) {
  std::vector<int64_t> p;
  for (int64_t r = 0; r < H; ++r)
    for (int64_t c = 0; c < W; ++c) p.push_back(r * W + c);
  return p;
}

std::vector<int64_t> column_major(int64_t H, int64_t W) {
  std::vector<int64_t> p;
  for (int64_t c = 0; c < W; ++c)
    for (int64_t r = 0; r < H; ++r) p.push_back(r * W + c);
  return p;
}

// Boustrophedon along rows (or columns) starting at the corner (flip_r, flip_c).
std::vector<int64_t> snake(int64_t H, int64_t W, bool along_rows, bool flip_r, bool flip_c) {
  std::vector<int64_t> p;
  const int64_t outer = along_rows ? H : W, inner = along_rows ? W : H;
  for (int64_t i = 0; i < outer; ++i)
    for (int64_t k = 0; k < inner; ++k) {
      const int64_t j = (i % 2 == 0) ? k : inner - 1 - k;
      int64_t r = along_rows ? i : j, c = along_rows ? j : i;
      if (flip_r) r = H - 1 - r;
      if (flip_c) c = W - 1 - c;
      p.push_back(r * W + c);
    }
  return p;
}

}  // namespace

ScanPlan vim_bidirectional(int64_t H, int64_t W) {
  check_grid(H, W, "vim_bidirectional");
  const auto fwd = row_major(H, W);
  return {H, W, {fwd, reversed(fwd)}};
}

ScanPlan cross_scan(int64_t H, int64_t W) {
  check_grid(H, W, "cross_scan");
  const auto rows = row_major(H, W), cols = column_major(H, W);
  return {H, W, {rows, cols, reversed(rows), reversed(cols)}};
}

ScanPlan zigzag_scan(int64_t H, int64_t W) {
  check_grid(H, W, "zigzag_scan");
  ScanPlan plan{H, W, {}};
  for (bool along_rows : {true, false})
    for (bool flip_r : {false, true})
      for (bool flip_c : {false, true}) plan.paths.push_back(snake(H, W, along_rows, flip_r, flip_c));
  return plan;
}

ScanPlan atrous_scan(int64_t H, int64_t W, int64_t step) {
  check_grid(H, W, "atrous_scan");
  if (step < 1) throw Error("atrous_scan: step must be >= 1, found " + std::to_string(step));
  ScanPlan plan{H, W, {}};
  int64_t k = 0;
  for (int64_t i = 0; i < std::min(step, H); ++i)
    for (int64_t j = 0; j < std::min(step, W); ++j, ++k) {
      // The sub-grid as its own (h x w) grid, then one of the four cross-scan directions.
      const int64_t h = (H - i + step - 1) / step, w = (W - j + step - 1) / step;
      const auto sub = cross_scan(h, w).paths[static_cast<size_t>(k % 4)];
      std::vector<int64_t> p;
      for (int64_t s : sub) p.push_back((i + (s / w) * step) * W + j + (s % w) * step);
      plan.paths.push_back(std::move(p));
    }
  return plan;
}

ScanPlan local_bidirectional_scan(int64_t H, int64_t W, int64_t window) {
  check_grid(H, W, "local_bidirectional_scan");
  if (window < 1) throw Error("local_bidirectional_scan: window must be >= 1, found " + std::to_string(window));
  const auto fwd = row_major(H, W);
  ScanPlan plan{H, W, {fwd}};
  for (size_t s = 0; s < fwd.size(); s += static_cast<size_t>(window)) {
    const size_t e = std::min(fwd.size(), s + static_cast<size_t>(window));
    plan.paths.emplace_back(fwd.rbegin() + static_cast<std::ptrdiff_t>(fwd.size() - e),
                            fwd.rbegin() + static_cast<std::ptrdiff_t>(fwd.size() - s));
  }
  return plan;
}

void check_scan_plan(const ScanPlan& plan) {
  check_grid(plan.height, plan.width, "scan plan");
  const int64_t cells = plan.height * plan.width;
  std::vector<char> seen(static_cast<size_t>(cells), 0);
  for (size_t p = 0; p < plan.paths.size(); ++p) {
    if (plan.paths[p].empty()) throw Error("scan plan: path " + std::to_string(p) + " is empty");
    for (int64_t cell : plan.paths[p]) {
      if (cell < 0 || cell >= cells)
        throw Error("scan plan: path " + std::to_string(p) + " visits cell " + std::to_string(cell) + " outside [0, " +
                    std::to_string(cells) + ")");
      seen[static_cast<size_t>(cell)] = 1;
    }
  }
  const auto missing = std::find(seen.begin(), seen.end(), 0);
  if (missing != seen.end())
    throw Error("scan plan: cell " + std::to_string(missing - seen.begin()) + " is visited by no path");
}

void run_scan_plan(const ScanPlan& plan, const Tensor& x, const PathScan& scan, const Tensor& y) {
  check_scan_plan(plan);
  check_dtype(x, DType::f32, "run_scan_plan: x");
  check_contiguous(x, "run_scan_plan: x");
  const int64_t cells = plan.height * plan.width;
  if (x.ndim() != 3 || x.dim(1) != cells)
    throw Error("run_scan_plan: x must be [B, " + std::to_string(cells) + ", D], found " + x.str());
  check_dtype(y, DType::f32, "run_scan_plan: y");
  check_contiguous(y, "run_scan_plan: y");
  check_shape(y, x.shape(), "run_scan_plan: y");
  const int64_t B = x.dim(0), D = x.dim(2);
  const size_t row = static_cast<size_t>(D) * sizeof(float);
  const float* px = x.data<float>();
  float* py = y.mutable_data<float>();
  std::fill_n(py, B * cells * D, 0.f);
  for (size_t p = 0; p < plan.paths.size(); ++p) {
    const auto& path = plan.paths[p];
    const int64_t len = static_cast<int64_t>(path.size());
    const Tensor xs = Tensor::empty(DType::f32, {B, len, D});
    const Tensor ys = Tensor::empty(DType::f32, {B, len, D});
    float* pxs = xs.mutable_data<float>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < len; ++i) std::memcpy(pxs + (b * len + i) * D, px + (b * cells + path[static_cast<size_t>(i)]) * D, row);
    scan(static_cast<int64_t>(p), xs, ys);
    const float* pys = ys.data<float>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < len; ++i) {
        float* out = py + (b * cells + path[static_cast<size_t>(i)]) * D;
        const float* in = pys + (b * len + i) * D;
        for (int64_t d = 0; d < D; ++d) out[d] += in[d];
      }
  }
}

}  // namespace subq::ops
