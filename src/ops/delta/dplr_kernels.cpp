// Highway kernels behind dplr_kernels.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/delta/dplr_kernels.cpp"
#include <algorithm>
#include <cstdint>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Up to 4 vectors of state columns per pass where there are 32 vector registers, 2 with
// 16: each row's broadcasts of w, a, b, k, q then serve NV vectors.
constexpr int kStepVectors = HWY_MAX_BYTES >= 64 ? 4 : 2;

template <int NV, class D>
HWY_INLINE void StepColumns(D d, float* S, int64_t dk, int64_t N, const float* w, const float* a, const float* b,
                            const float* k, const float* v, const float* q, float* o) {
  using V = hn::Vec<D>;
  const size_t NL = hn::Lanes(d);
  V u[NV], vv[NV], acc[NV];
  for (int c = 0; c < NV; ++c) {
    u[c] = hn::Zero(d);
    acc[c] = hn::Zero(d);
    vv[c] = hn::LoadU(d, v + c * NL);
  }
  for (int64_t r = 0; r < dk; ++r) {
    const V ar = hn::Set(d, a[r]);
    for (int c = 0; c < NV; ++c) u[c] = hn::MulAdd(ar, hn::LoadU(d, S + r * N + c * NL), u[c]);
  }
  for (int64_t r = 0; r < dk; ++r) {
    const V wr = hn::Set(d, w[r]), br = hn::Set(d, b[r]), kr = hn::Set(d, k[r]), qr = hn::Set(d, q[r]);
    for (int c = 0; c < NV; ++c) {
      float* s = S + r * N + c * NL;
      const V injected = hn::MulAdd(br, u[c], hn::Mul(kr, vv[c]));
      const V updated = hn::MulAdd(wr, hn::LoadU(d, s), injected);
      hn::StoreU(updated, d, s);
      acc[c] = hn::MulAdd(qr, updated, acc[c]);
    }
  }
  for (int c = 0; c < NV; ++c) hn::StoreU(acc[c], d, o + c * NL);
}

void DplrStep(float* S, int64_t dk, int64_t N, const float* w, const float* a, const float* b, const float* k,
              const float* v, const float* q, float* o) {
  const hn::ScalableTag<float> d;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  int64_t n = 0;
  for (; n + kStepVectors * NL <= N; n += kStepVectors * NL)
    StepColumns<kStepVectors>(d, S + n, dk, N, w, a, b, k, v + n, q, o + n);
  for (; n < N; n += NL) StepColumns<1>(d, S + n, dk, N, w, a, b, k, v + n, q, o + n);
}

void DplrDecayedDots(const float* q, const float* a_next, const float* K, const float* Bk, const float* W, int64_t n,
                     int64_t s, int64_t i, float* qk, float* qb, float* ak, float* ab, float* e) {
  const hn::ScalableTag<float> d;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  std::fill(e, e + n, 1.f);
  for (int64_t j = i; j >= s; --j) {
    const float* kj = K + j * n;
    const float* bj = Bk + j * n;
    const float* wj = W + j * n;
    const bool advance = j > s;
    auto sqk = hn::Zero(d), sqb = hn::Zero(d), sak = hn::Zero(d), sab = hn::Zero(d);
    for (int64_t c = 0; c < n; c += NL) {
      const auto ev = hn::LoadU(d, e + c);
      const auto kv = hn::LoadU(d, kj + c), bv = hn::LoadU(d, bj + c);
      const auto qe = hn::Mul(hn::LoadU(d, q + c), ev);
      sqk = hn::MulAdd(qe, kv, sqk);
      sqb = hn::MulAdd(qe, bv, sqb);
      if (a_next) {
        const auto ae = hn::Mul(hn::LoadU(d, a_next + c), ev);
        sak = hn::MulAdd(ae, kv, sak);
        sab = hn::MulAdd(ae, bv, sab);
      }
      if (advance) hn::StoreU(hn::Mul(ev, hn::LoadU(d, wj + c)), d, e + c);
    }
    qk[j] = hn::GetLane(hn::SumOfLanes(d, sqk));
    qb[j] = hn::GetLane(hn::SumOfLanes(d, sqb));
    if (a_next) {
      ak[j] = hn::GetLane(hn::SumOfLanes(d, sak));
      ab[j] = hn::GetLane(hn::SumOfLanes(d, sab));
    }
  }
}

}  // namespace subq::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "src/ops/delta/dplr_kernels.h"

namespace subq::ops {

HWY_EXPORT(DplrStep);
HWY_EXPORT(DplrDecayedDots);

void dplr_step(float* S, int64_t dk, int64_t N, const float* w, const float* a, const float* b, const float* k,
               const float* v, const float* q, float* o) {
  HWY_DYNAMIC_DISPATCH(DplrStep)(S, dk, N, w, a, b, k, v, q, o);
}
void dplr_decayed_dots(const float* q, const float* a_next, const float* K, const float* Bk, const float* W, int64_t n,
                       int64_t s, int64_t i, float* qk, float* qb, float* ak, float* ab, float* e) {
  HWY_DYNAMIC_DISPATCH(DplrDecayedDots)(q, a_next, K, Bk, W, n, s, i, qk, qb, ak, ab, e);
}

}  // namespace subq::ops
#endif  // HWY_ONCE
