// 2D scan orders of the vision Mamba backbones. A scan order is not a new kernel: it is a
// set of paths over the H x W grid of patches (cells numbered row-major, r * W + c), each
// scanned as its own sequence from a fresh state, and a merge that sums, at every cell,
// the outputs of each path that visits it. Any 1D scan (selective scan, S4D, ...) runs
// on the gathered paths.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "subq/tensor.h"

namespace subq::ops {

struct ScanPlan {
  int64_t height = 0, width = 0;
  std::vector<std::vector<int64_t>> paths;  // cell indices in scan order
};

// Vim: the raster order and its reverse.
ScanPlan vim_bidirectional(int64_t height, int64_t width);
// VMamba cross scan (also MSVMamba, GroupMamba): row-major, column-major, and both reversed.
ScanPlan cross_scan(int64_t height, int64_t width);
// PlainMamba continuous zig-zag: from each corner, a boustrophedon along rows and one along
// columns (8 paths); consecutive cells of a path are always grid neighbours.
ScanPlan zigzag_scan(int64_t height, int64_t width);
// EfficientVMamba atrous (skip) scan: the grid split into step x step dilated sub-grids
// (cells with r % step = i, c % step = j), sub-grid k scanned in cross-scan direction k % 4.
// Each cell is visited once.
ScanPlan atrous_scan(int64_t height, int64_t width, int64_t step);
// LBMamba: the global forward raster scan plus a backward scan inside every window of
// `window` consecutive raster positions (the last window may be shorter).
ScanPlan local_bidirectional_scan(int64_t height, int64_t width, int64_t window);

// Throws Error unless every path index is a cell of the grid and every cell is visited.
void check_scan_plan(const ScanPlan& plan);

// Scans path p of x: xs and ys are f32 [B, len_p, D] contiguous; ys must be fully written.
using PathScan = std::function<void(int64_t path, const Tensor& xs, const Tensor& ys)>;

// y[b, cell] = sum over paths p visiting cell of scan(p, x[b, path_p])[position of cell in p].
// x, y f32 [B, H * W, D] contiguous.
void run_scan_plan(const ScanPlan& plan, const Tensor& x, const PathScan& scan, const Tensor& y);

}  // namespace subq::ops
