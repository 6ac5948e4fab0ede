#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench/ceilings.cpp"
#include <chrono>
#include <cstdint>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace subq::bench::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Runs `iters` rounds of 12 independent FMA chains; returns flops performed. The
// result is stored so the compiler cannot drop the loop.
double FmaLoop(int64_t iters, float* sink) {
  const hn::ScalableTag<float> d;
  auto a0 = hn::Set(d, 1.0f), a1 = hn::Set(d, 1.1f), a2 = hn::Set(d, 1.2f), a3 = hn::Set(d, 1.3f);
  auto a4 = hn::Set(d, 1.4f), a5 = hn::Set(d, 1.5f), a6 = hn::Set(d, 1.6f), a7 = hn::Set(d, 1.7f);
  auto a8 = hn::Set(d, 1.8f), a9 = hn::Set(d, 1.9f), a10 = hn::Set(d, 2.0f), a11 = hn::Set(d, 2.1f);
  const auto m = hn::Set(d, 0.999999f), c = hn::Set(d, 1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
    a0 = hn::MulAdd(a0, m, c); a1 = hn::MulAdd(a1, m, c); a2 = hn::MulAdd(a2, m, c);
    a3 = hn::MulAdd(a3, m, c); a4 = hn::MulAdd(a4, m, c); a5 = hn::MulAdd(a5, m, c);
    a6 = hn::MulAdd(a6, m, c); a7 = hn::MulAdd(a7, m, c); a8 = hn::MulAdd(a8, m, c);
    a9 = hn::MulAdd(a9, m, c); a10 = hn::MulAdd(a10, m, c); a11 = hn::MulAdd(a11, m, c);
  }
  auto s = hn::Add(hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)), hn::Add(hn::Add(a4, a5), hn::Add(a6, a7)));
  s = hn::Add(s, hn::Add(hn::Add(a8, a9), hn::Add(a10, a11)));
  *sink = hn::GetLane(hn::SumOfLanes(d, s));
  return 2.0 * 12.0 * static_cast<double>(hn::Lanes(d)) * static_cast<double>(iters);
}

void Triad(float* a, const float* b, const float* c, float s, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const auto vs = hn::Set(d, s);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::Store(hn::MulAdd(hn::Load(d, c + i), vs, hn::Load(d, b + i)), d, a + i);
  for (; i < n; ++i) a[i] = b[i] + s * c[i];
}

// The sum of a[0, n), four vectors a step so that the adds do not bound the loop.
float ReadSum(const float* a, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d), s1 = s0, s2 = s0, s3 = s0;
  size_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    s0 = hn::Add(s0, hn::Load(d, a + i));
    s1 = hn::Add(s1, hn::Load(d, a + i + N));
    s2 = hn::Add(s2, hn::Load(d, a + i + 2 * N));
    s3 = hn::Add(s3, hn::Load(d, a + i + 3 * N));
  }
  float tail = 0.f;
  for (; i < n; ++i) tail += a[i];
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(s0, s1), hn::Add(s2, s3)))) + tail;
}

}  // namespace subq::bench::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>
#include <vector>

#include "bench/ceilings.h"
#include "src/core/parallel.h"
#include "subq/tensor.h"

namespace subq::bench {

HWY_EXPORT(FmaLoop);
HWY_EXPORT(Triad);
HWY_EXPORT(ReadSum);

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double measure_fma() {
  const int threads = num_threads();
  const int64_t iters = 20'000'000;
  double best = 0;
  std::vector<float> sinks(static_cast<size_t>(threads) * 16);
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<double> flops(static_cast<size_t>(threads));
    const double t0 = now_s();
    parallel_for(threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        flops[static_cast<size_t>(i)] = HWY_DYNAMIC_DISPATCH(FmaLoop)(iters, &sinks[static_cast<size_t>(i) * 16]);
    });
    const double dt = now_s() - t0;
    double total = 0;
    for (double f : flops) total += f;
    best = std::max(best, total / dt / 1e9);
  }
  return best;
}

// STREAM's triad a = b + s c and a plain read of b and c, over the same arrays (3 x 192
// MiB: far beyond any cache), first touched on the threads that stream them; best of five
// each.
struct Bandwidths {
  double triad_gbs = 0, read_gbs = 0;
};

Bandwidths measure_bandwidths(bool with_triad) {
  const size_t n = size_t{48} << 20;
  const Tensor a = Tensor::empty(DType::f32, {static_cast<int64_t>(n)});
  const Tensor b = Tensor::empty(DType::f32, {static_cast<int64_t>(n)});
  const Tensor c = Tensor::empty(DType::f32, {static_cast<int64_t>(n)});
  float* pa = a.mutable_data<float>();
  float* pb = b.mutable_data<float>();
  float* pc = c.mutable_data<float>();
  const int64_t blocks = static_cast<int64_t>(n / 4096);
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0 * 4096; i < b1 * 4096; ++i) {
      pa[i] = 0.f;
      pb[i] = 1.f;
      pc[i] = 2.f;
    }
  });
  const auto best_of_five = [&](double bytes, const auto& pass) {
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
      const double t0 = now_s();
      parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
        pass(static_cast<size_t>(b0) * 4096, static_cast<size_t>(b1 - b0) * 4096);
      });
      best = std::max(best, bytes / (now_s() - t0) / 1e9);
    }
    return best;
  };
  Bandwidths bw;
  if (with_triad)
    bw.triad_gbs = best_of_five(3.0 * 4.0 * static_cast<double>(n), [&](size_t off, size_t len) {
      HWY_DYNAMIC_DISPATCH(Triad)(pa + off, pb + off, pc + off, 3.f, len);
    });
  std::vector<float> sums(static_cast<size_t>(blocks));
  bw.read_gbs = best_of_five(2.0 * 4.0 * static_cast<double>(n), [&](size_t off, size_t len) {
    sums[off / 4096] = HWY_DYNAMIC_DISPATCH(ReadSum)(pb + off, len) + HWY_DYNAMIC_DISPATCH(ReadSum)(pc + off, len);
  });
  return bw;
}

}  // namespace

Ceilings measure_ceilings() {
  const Bandwidths bw = measure_bandwidths(true);
  return Ceilings{bw.triad_gbs, bw.read_gbs, measure_fma()};
}

double measure_read_gbs() { return measure_bandwidths(false).read_gbs; }

}  // namespace subq::bench
#endif  // HWY_ONCE
