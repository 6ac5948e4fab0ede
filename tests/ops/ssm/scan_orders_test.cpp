// 2D scan orders: each order against sequences permuted explicitly by loops over grid
// coordinates, their structural properties (permutations, zig-zag continuity), and the
// plan runner against the float64 selective scan run on every explicitly permuted
// sequence, un-permuted and summed. The grid is 5 x 7 so no dimension is a power of two.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "src/ops/ssm/scan_orders.h"
#include "src/ops/ssm/selective_scan.h"
#include "tests/reference/ssm.h"
#include "tests/support/random.h"

namespace subq {
namespace {

using Path = std::vector<int64_t>;
constexpr int64_t H = 5, W = 7;

int64_t cell(int64_t r, int64_t c) { return r * W + c; }

bool is_permutation(const Path& p) {
  Path s = p;
  std::sort(s.begin(), s.end());
  for (int64_t i = 0; i < H * W; ++i)
    if (s.size() != static_cast<size_t>(H * W) || s[static_cast<size_t>(i)] != i) return false;
  return true;
}

TEST(ScanOrders, VimAndCrossScanAreTheExplicitOrders) {
  Path fwd, bwd, cols, rcols;
  for (int64_t r = 0; r < H; ++r)
    for (int64_t c = 0; c < W; ++c) fwd.push_back(cell(r, c));
  for (int64_t r = H - 1; r >= 0; --r)
    for (int64_t c = W - 1; c >= 0; --c) bwd.push_back(cell(r, c));
  for (int64_t c = 0; c < W; ++c)
    for (int64_t r = 0; r < H; ++r) cols.push_back(cell(r, c));
  for (int64_t c = W - 1; c >= 0; --c)
    for (int64_t r = H - 1; r >= 0; --r) rcols.push_back(cell(r, c));
  EXPECT_EQ(ops::vim_bidirectional(H, W).paths, (std::vector<Path>{fwd, bwd}));
  EXPECT_EQ(ops::cross_scan(H, W).paths, (std::vector<Path>{fwd, cols, bwd, rcols}));
}

TEST(ScanOrders, ZigzagIsContinuousFromEveryCorner) {
  const auto plan = ops::zigzag_scan(H, W);
  ASSERT_EQ(plan.paths.size(), 8u);
  Path top_left_rows, bottom_right_cols;
  for (int64_t r = 0; r < H; ++r)
    for (int64_t k = 0; k < W; ++k) top_left_rows.push_back(cell(r, r % 2 == 0 ? k : W - 1 - k));
  for (int64_t i = 0; i < W; ++i)
    for (int64_t k = 0; k < H; ++k) bottom_right_cols.push_back(cell(H - 1 - (i % 2 == 0 ? k : H - 1 - k), W - 1 - i));
  EXPECT_EQ(plan.paths[0], top_left_rows);
  EXPECT_EQ(plan.paths[7], bottom_right_cols);
  std::set<std::pair<int64_t, int64_t>> starts;  // (first cell, second cell): all 8 distinct
  for (const Path& p : plan.paths) {
    EXPECT_TRUE(is_permutation(p));
    for (size_t i = 1; i < p.size(); ++i) {
      const int64_t dr = std::abs(p[i] / W - p[i - 1] / W), dc = std::abs(p[i] % W - p[i - 1] % W);
      EXPECT_EQ(dr + dc, 1) << "jump between " << p[i - 1] << " and " << p[i];
    }
    starts.insert({p[0], p[1]});
  }
  EXPECT_EQ(starts.size(), 8u);
}

TEST(ScanOrders, AtrousAndLocalAreTheExplicitOrders) {
  // Step 2: sub-grids (0,0) row-major, (0,1) column-major, (1,0) and (1,1) reversed.
  Path g00, g01, g10, g11;
  for (int64_t r = 0; r < H; r += 2)
    for (int64_t c = 0; c < W; c += 2) g00.push_back(cell(r, c));
  for (int64_t c = 1; c < W; c += 2)
    for (int64_t r = 0; r < H; r += 2) g01.push_back(cell(r, c));
  for (int64_t r = 3; r >= 1; r -= 2)
    for (int64_t c = 6; c >= 0; c -= 2) g10.push_back(cell(r, c));
  for (int64_t c = 5; c >= 1; c -= 2)
    for (int64_t r = 3; r >= 1; r -= 2) g11.push_back(cell(r, c));
  EXPECT_EQ(ops::atrous_scan(H, W, 2).paths, (std::vector<Path>{g00, g01, g10, g11}));
  Path all;
  for (const Path& p : ops::atrous_scan(H, W, 3).paths) all.insert(all.end(), p.begin(), p.end());
  EXPECT_TRUE(is_permutation(all));

  const auto local = ops::local_bidirectional_scan(H, W, 4);
  ASSERT_EQ(local.paths.size(), 1u + 9u);  // forward + ceil(35 / 4) windows
  for (int64_t s = 0, k = 1; s < H * W; s += 4, ++k) {
    Path back;
    for (int64_t i = std::min<int64_t>(s + 4, H * W) - 1; i >= s; --i) back.push_back(i);
    EXPECT_EQ(local.paths[static_cast<size_t>(k)], back);
  }
}

// Every plan, run with a real selective scan whose parameters differ per path (as the
// directions of VMamba have their own), equals the float64 scan of each explicitly
// permuted sequence, scattered back to its cells and summed.
TEST(ScanOrders, RunningAPlanEqualsScanningThePermutedSequences) {
  auto rng = test::rng_for_test();
  const int64_t B = 2, D = 11, N = 4, L = H * W;
  const Tensor x = test::random_tensor(rng, {B, L, D});
  const Tensor A = test::random_tensor(rng, {D, N}, -2, -0.1f);
  const Tensor Bp = test::random_tensor(rng, {B, L, N}), Cp = test::random_tensor(rng, {B, L, N});
  const ref::Vec xd = test::to_double(x), Ad = test::to_double(A), Bd = test::to_double(Bp), Cd = test::to_double(Cp);
  for (const auto& plan : {ops::vim_bidirectional(H, W), ops::cross_scan(H, W), ops::zigzag_scan(H, W),
                           ops::atrous_scan(H, W, 2), ops::local_bidirectional_scan(H, W, 6)}) {
    // dt, B and C are per-cell inputs, so they travel with the cell (gathered like x).
    auto gather = [&](const ref::Vec& v, const Path& p, int64_t width) {
      ref::Vec out;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c : p)
          for (int64_t k = 0; k < width; ++k) out.push_back(v[static_cast<size_t>((b * L + c) * width + k)]);
      return out;
    };
    auto dt_of = [&](int64_t path) { return 0.05f * static_cast<float>(path + 1); };
    const ops::PathScan scan = [&](int64_t path, const Tensor& xs, const Tensor& ys) {
      const auto& p = plan.paths[static_cast<size_t>(path)];
      const int64_t len = xs.dim(1);
      Tensor dt = Tensor::empty(DType::f32, {B, len, D}), Bs = Tensor::empty(DType::f32, {B, len, N}), Cs = Tensor::empty(DType::f32, {B, len, N});
      std::fill_n(dt.mutable_data<float>(), dt.numel(), dt_of(path));
      const ref::Vec bg = gather(Bd, p, N), cg = gather(Cd, p, N);
      std::copy(bg.begin(), bg.end(), Bs.mutable_data<float>());
      std::copy(cg.begin(), cg.end(), Cs.mutable_data<float>());
      const Tensor h = Tensor::zeros(DType::f32, {B, D, N});
      ops::selective_scan(xs, dt, Tensor(), false, A, Bs, Cs, Tensor(), Tensor(), h, ys);
    };
    const Tensor y = test::nan_tensor({B, L, D});
    ops::run_scan_plan(plan, x, scan, y);

    ref::Vec want(static_cast<size_t>(B * L * D), 0.0);
    for (size_t pi = 0; pi < plan.paths.size(); ++pi) {
      const Path& p = plan.paths[pi];
      const int64_t len = static_cast<int64_t>(p.size());
      ref::Vec h(static_cast<size_t>(B * D * N), 0.0);
      const ref::Vec dt(static_cast<size_t>(B * len * D), dt_of(static_cast<int64_t>(pi)));
      const ref::Vec ys = ref::selective_scan(gather(xd, p, D), dt, {}, false, Ad, gather(Bd, p, N), gather(Cd, p, N), {}, {}, h, B, len, D, N, 1);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < len; ++i)
          for (int64_t d = 0; d < D; ++d) want[static_cast<size_t>((b * L + p[static_cast<size_t>(i)]) * D + d)] += ys[static_cast<size_t>((b * len + i) * D + d)];
    }
    test::expect_close(y, want, 1e-5, 1e-6, std::to_string(plan.paths.size()) + " paths");
  }
}

TEST(ScanOrders, RejectsBadPlans) {
  EXPECT_THROW(ops::cross_scan(0, 3), Error);
  EXPECT_THROW(ops::atrous_scan(3, 3, 0), Error);
  EXPECT_THROW(ops::check_scan_plan(ops::ScanPlan{2, 2, {{0, 1, 2}}}), Error);      // cell 3 never visited
  EXPECT_THROW(ops::check_scan_plan(ops::ScanPlan{2, 2, {{0, 1, 2, 4}}}), Error);   // outside the grid
  const Tensor x = Tensor::zeros(DType::f32, {1, 5, 2});
  EXPECT_THROW(ops::run_scan_plan(ops::cross_scan(2, 2), x, [](int64_t, const Tensor&, const Tensor&) {}, x), Error);
}

}  // namespace
}  // namespace subq
