// GEMV-style y (+)= x · W^T for few rows of x: each weight row is read once from memory
// and dotted with all rows of x (vector accumulators along K, reduced at the end). Four
// weight rows at a time give independent accumulators and four memory streams; threads
// take disjoint row ranges of W. bf16 weights are widened with a shift: one 32-bit lane
// holds two bf16, so `w << 16` is the even element and `w & 0xFFFF0000` the odd one; x is
// reordered once per call into the same even/odd order instead.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/common/gemv.cpp"
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/common/gemm_kernels.h"
#include "subq/tensor.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
constexpr size_t kLanes = HWY_LANES(float);
constexpr size_t kRows = 4;   // weight rows per step
constexpr size_t kXRows = 4;  // rows of x per pass over a weight row block
struct ReorderedX;

template <class D>
HWY_INLINE hn::Vec<D> LoadWide(D d, const float* p) {
  return hn::LoadU(d, p);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadWide(D d, const hwy::bfloat16_t* p) {
  const hn::Rebind<uint16_t, D> du16;
  const hn::Rebind<uint32_t, D> du32;
  const auto bits = hn::PromoteTo(du32, hn::LoadU(du16, reinterpret_cast<const uint16_t*>(p)));
  return hn::BitCast(d, hn::ShiftLeft<16>(bits));
}
template <class D>
HWY_INLINE hn::Vec<D> LoadWide(D d, const hwy::float16_t* p) {
  const hn::Rebind<hwy::float16_t, D> dh;
  return hn::PromoteTo(d, hn::LoadU(dh, p));
}
HWY_INLINE float WideScalar(const float* p) { return *p; }
HWY_INLINE float WideScalar(const hwy::float16_t* p) {
  const hn::CappedTag<float, 1> d1;
  return hn::GetLane(LoadWide(d1, p));
}
HWY_INLINE float WideScalar(const hwy::bfloat16_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Elements of K covered by one vector step, and the step itself: acc[m][r] += x[m] . w[r]
// over [k, k + kStep). xs rows are x as the step expects it (reordered for bf16).
template <class T>
struct Step {
  static constexpr size_t kStep = kLanes;
  template <size_t MB, size_t R>
  static HWY_INLINE void Run(const float* const* xs, size_t k, const T* const* w, VF (&acc)[MB][R]) {
    const DF d;
    VF wv[R];
    for (size_t r = 0; r < R; ++r) wv[r] = LoadWide(d, w[r] + k);
    for (size_t m = 0; m < MB; ++m) {
      const VF xv = hn::LoadU(d, xs[m] + k);
      for (size_t r = 0; r < R; ++r) acc[m][r] = hn::MulAdd(xv, wv[r], acc[m][r]);
    }
  }
};

#if HWY_TARGET != HWY_SCALAR
template <>
struct Step<hwy::bfloat16_t> {
  static constexpr size_t kStep = 2 * kLanes;
  template <size_t MB, size_t R>
  static HWY_INLINE void Run(const float* const* xs, size_t k, const hwy::bfloat16_t* const* w, VF (&acc)[MB][R]) {
    const DF d;
    const hn::RebindToUnsigned<DF> du32;
    const hn::Repartition<uint16_t, DF> du16;
    const auto hi_mask = hn::Set(du32, 0xFFFF0000u);
    VF even[R], odd[R];
    for (size_t r = 0; r < R; ++r) {
      const auto bits = hn::BitCast(du32, hn::LoadU(du16, reinterpret_cast<const uint16_t*>(w[r] + k)));
      even[r] = hn::BitCast(d, hn::ShiftLeft<16>(bits));
      odd[r] = hn::BitCast(d, hn::And(bits, hi_mask));
    }
    for (size_t m = 0; m < MB; ++m) {
      const VF xe = hn::LoadU(d, xs[m] + k);
      const VF xo = hn::LoadU(d, xs[m] + k + kLanes);
      for (size_t r = 0; r < R; ++r) {
        acc[m][r] = hn::MulAdd(xe, even[r], acc[m][r]);
        acc[m][r] = hn::MulAdd(xo, odd[r], acc[m][r]);
      }
    }
  }
};
#endif

// out[m * R + r] = x[m] . w[r] over K. The K % kStep tail is in x's natural order.
// With ahead > 0, also requests the line `ahead` bytes past each weight read into L2 (not
// L1): the next block of rows, so its streams start without waiting for the hardware
// prefetcher. Requests into L1 hold the core's few L1 miss buffers for the whole memory
// latency; on a Zen 4 VM, Llama-sized rows of 768 bf16 streamed at 12.5 GB/s per thread
// with them and 18-19 with L2 requests (a plain read of the same bytes: 22).
template <size_t MB, size_t R, class T>
HWY_INLINE void DotRows(size_t K, const float* const* xs, const T* const* w, size_t ahead, float* out) {
  const DF d;
  VF acc[MB][R];
  for (size_t m = 0; m < MB; ++m) {
    for (size_t r = 0; r < R; ++r) acc[m][r] = hn::Zero(d);
  }
  constexpr size_t kStep = Step<T>::kStep;
  const size_t k_vec = K / kStep * kStep;
  if (ahead == 0) {
    for (size_t k = 0; k < k_vec; k += kStep) Step<T>::template Run<MB, R>(xs, k, w, acc);
  } else {
    for (size_t k = 0; k < k_vec; k += kStep) {
      // Integer arithmetic: past the last row the address is outside W (a prefetch of it
      // is harmless, forming such a pointer is not).
      for (size_t r = 0; r < R; ++r)
        __builtin_prefetch(reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(w[r] + k) + ahead), 0, 2);
      Step<T>::template Run<MB, R>(xs, k, w, acc);
    }
  }
  for (size_t m = 0; m < MB; ++m) {
    for (size_t r = 0; r < R; ++r) {
      float tail = 0.f;
      for (size_t k = k_vec; k < K; ++k) tail += xs[m][k] * WideScalar(w[r] + k);
      out[m * R + r] = hn::GetLane(hn::SumOfLanes(d, acc[m][r])) + tail;
    }
  }
}

template <size_t R, class T>
HWY_INLINE void DotRowsAnyM(size_t MB, size_t K, const float* const* xs, const T* const* w, size_t ahead,
                            float* out) {
  switch (MB) {
    case 1: return DotRows<1, R>(K, xs, w, ahead, out);
    case 2: return DotRows<2, R>(K, xs, w, ahead, out);
    case 3: return DotRows<3, R>(K, xs, w, ahead, out);
    default: return DotRows<4, R>(K, xs, w, ahead, out);
  }
}

template <class T>
void GemvTyped(size_t M, size_t K, const float* x, size_t ldx, const WeightOutput* outputs, size_t count,
               bool accumulate) {
  // bf16 steps see x in the even/odd order of their widened weights.
  const Scratch<ReorderedX, float> reordered(Step<T>::kStep == 2 * kLanes ? M * K : 0);
  const float* xbase = x;
  size_t xstride = ldx;
  if constexpr (Step<T>::kStep == 2 * kLanes) {
    constexpr size_t kStep = Step<T>::kStep;
    for (size_t m = 0; m < M; ++m) {
      const float* src = x + m * ldx;
      float* dst = reordered.data() + m * K;
      const size_t k_vec = K / kStep * kStep;
      for (size_t k = 0; k < k_vec; k += kStep)
        for (size_t j = 0; j < kLanes; ++j) {
          dst[k + j] = src[k + 2 * j];
          dst[k + kLanes + j] = src[k + 2 * j + 1];
        }
      std::copy(src + k_vec, src + K, dst + k_vec);
    }
    xbase = reordered.data();
    xstride = K;
  }
  // Rows [begin, end) of one output's weight.
  auto run_rows = [&](const WeightOutput& out_w, size_t begin, size_t end) {
    const T* w = static_cast<const T*>(out_w.w);
    const size_t ldw = static_cast<size_t>(out_w.ldw), ldy = static_cast<size_t>(out_w.ldy);
    float* y = out_w.y;
    float out[kXRows * kRows];
    const float* xs[kXRows];
    const T* rows[kRows];
    auto emit = [&](size_t n, size_t m0, size_t mb, size_t nr) {
      for (size_t m = 0; m < mb; ++m)
        for (size_t r = 0; r < nr; ++r) {
          float& dst = y[(m0 + m) * ldy + n + r];
          dst = accumulate ? dst + out[m * nr + r] : out[m * nr + r];
        }
    };
    size_t n = begin;
    for (; n + kRows <= end; n += kRows) {
      for (size_t r = 0; r < kRows; ++r) rows[r] = w + (n + r) * ldw;
      for (size_t m0 = 0; m0 < M; m0 += kXRows) {
        const size_t mb = std::min(kXRows, M - m0);
        for (size_t m = 0; m < mb; ++m) xs[m] = xbase + (m0 + m) * xstride;
        DotRowsAnyM<kRows>(mb, K, xs, rows, m0 == 0 ? kRows * ldw * sizeof(T) : 0, out);
        emit(n, m0, mb, kRows);
      }
    }
    for (; n < end; ++n) {
      rows[0] = w + n * ldw;
      for (size_t m0 = 0; m0 < M; m0 += kXRows) {
        const size_t mb = std::min(kXRows, M - m0);
        for (size_t m = 0; m < mb; ++m) xs[m] = xbase + (m0 + m) * xstride;
        DotRowsAnyM<1>(mb, K, xs, rows, 0, out);
        emit(n, m0, mb, 1);
      }
    }
  };
  // The outputs' rows form one run [0, total) split between the threads, so that a group
  // of small products (q, k and v) keeps every thread streaming through one fork and join.
  size_t total = 0;
  for (size_t i = 0; i < count; ++i) total += static_cast<size_t>(outputs[i].n);
  // A range of rows per thread, at least 16K weights (32 KiB of bf16, about what a core
  // streams while the pool wakes), taken 16K weights at a time so that threads done early
  // take over the rest of slower ones' (parallel_for_balanced). Whole chunks handed out
  // one after another to every thread streamed 30% slower on a two-core VM: each
  // thread's reads jumped every chunk.
  const int64_t rows = static_cast<int64_t>(std::max<size_t>(kRows, (size_t{1} << 14) / K / kRows * kRows));
  parallel_for_balanced(static_cast<int64_t>(total), rows, rows, [&](int64_t b, int64_t e) {
    size_t first = 0;
    for (size_t i = 0; i < count && first < static_cast<size_t>(e); ++i) {
      const size_t n = static_cast<size_t>(outputs[i].n);
      const size_t lo = std::max(first, static_cast<size_t>(b)), hi = std::min(first + n, static_cast<size_t>(e));
      if (lo < hi) run_rows(outputs[i], lo - first, hi - first);
      first += n;
    }
  });
}

void Gemv(size_t M, size_t K, const float* x, size_t ldx, DType wdt, const WeightOutput* outputs, size_t count,
          bool accumulate) {
  switch (wdt) {
    case DType::bf16: return GemvTyped<hwy::bfloat16_t>(M, K, x, ldx, outputs, count, accumulate);
    case DType::f16: return GemvTyped<hwy::float16_t>(M, K, x, ldx, outputs, count, accumulate);
    default: return GemvTyped<float>(M, K, x, ldx, outputs, count, accumulate);
  }
}

}  // namespace subq::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

namespace subq::ops {

HWY_EXPORT(Gemv);

void gemv_xwt_group(int64_t M, int64_t K, const float* x, int64_t ldx, DType wdt, std::span<const WeightOutput> outputs,
                    bool accumulate) {
  HWY_DYNAMIC_DISPATCH(Gemv)(static_cast<size_t>(M), static_cast<size_t>(K), x, static_cast<size_t>(ldx), wdt,
                             outputs.data(), outputs.size(), accumulate);
}

void gemv_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w, DType wdt, int64_t ldw,
              float* y, int64_t ldy, bool accumulate) {
  const WeightOutput output{w, N, ldw, y, ldy};
  gemv_xwt_group(M, K, x, ldx, wdt, {&output, 1}, accumulate);
}

}  // namespace subq::ops
#endif  // HWY_ONCE
