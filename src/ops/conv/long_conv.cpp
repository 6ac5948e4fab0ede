// Long causal convolution, direct and by FFT (see long_conv.h).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/conv/long_conv.cpp"
#include <algorithm>
#include <cstdint>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Lane = channel. Outputs t in [t0, t1) for channels [c0, c0 + Lanes(d)) of one sequence;
// kt is the filter transposed to [taps, C]. Four consecutive outputs share each filter
// load, so the loop does ~1.25 loads per FMA.
template <class D>
HWY_INLINE void DirectBlock(D d, const float* u, const float* kt, int64_t taps, int64_t channels, int64_t c0,
                            int64_t t0, int64_t t1, float* y) {
  using V = hn::Vec<D>;
  int64_t t = t0;
  for (; t + 4 <= t1; t += 4) {
    V a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    // Taps every one of the four outputs has: j <= t.
    const int64_t common = std::min(taps, t + 1);
    for (int64_t j = 0; j < common; ++j) {
      const V k = hn::LoadU(d, kt + j * channels + c0);
      const float* ur = u + (t - j) * channels + c0;
      a0 = hn::MulAdd(k, hn::LoadU(d, ur), a0);
      a1 = hn::MulAdd(k, hn::LoadU(d, ur + channels), a1);
      a2 = hn::MulAdd(k, hn::LoadU(d, ur + 2 * channels), a2);
      a3 = hn::MulAdd(k, hn::LoadU(d, ur + 3 * channels), a3);
    }
    // Taps only the later outputs reach (t + i - j >= 0 with j > t).
    for (int64_t j = common; j < std::min(taps, t + 4); ++j) {
      const V k = hn::LoadU(d, kt + j * channels + c0);
      if (t + 1 - j >= 0) a1 = hn::MulAdd(k, hn::LoadU(d, u + (t + 1 - j) * channels + c0), a1);
      if (t + 2 - j >= 0) a2 = hn::MulAdd(k, hn::LoadU(d, u + (t + 2 - j) * channels + c0), a2);
      if (t + 3 - j >= 0) a3 = hn::MulAdd(k, hn::LoadU(d, u + (t + 3 - j) * channels + c0), a3);
    }
    hn::StoreU(a0, d, y + t * channels + c0);
    hn::StoreU(a1, d, y + (t + 1) * channels + c0);
    hn::StoreU(a2, d, y + (t + 2) * channels + c0);
    hn::StoreU(a3, d, y + (t + 3) * channels + c0);
  }
  for (; t < t1; ++t) {
    V a = hn::Zero(d);
    for (int64_t j = 0; j < std::min(taps, t + 1); ++j)
      a = hn::MulAdd(hn::LoadU(d, kt + j * channels + c0), hn::LoadU(d, u + (t - j) * channels + c0), a);
    hn::StoreU(a, d, y + t * channels + c0);
  }
}

void DirectChannels(const float* u, const float* kt, int64_t taps, int64_t channels, int64_t c0, int64_t c1,
                    int64_t t0, int64_t t1, float* y) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  int64_t c = c0;
  for (; c + L <= c1; c += L) DirectBlock(d, u, kt, taps, channels, c, t0, t1, y);
  for (; c < c1; ++c) DirectBlock(d1, u, kt, taps, channels, c, t0, t1, y);
}

// Multiplies n complex numbers a *= b (interleaved re, im) and scales by s.
void ComplexMulScale(float* a, const float* b, size_t n, float s) {
  size_t i = 0;
#if HWY_TARGET != HWY_SCALAR
  const hn::ScalableTag<float> d;
  const size_t L = hn::Lanes(d);
  const auto scale = hn::Set(d, s);
  // Even lanes hold real parts: (ar, ai)(br, bi) = (ar br - ai bi, ai br + ar bi)
  // = (ar, ai) * br + (ai, ar) * bi * (-1, +1).
  const auto signs = hn::OddEven(hn::Set(d, 1.f), hn::Set(d, -1.f));
  for (; i + L / 2 <= n; i += L / 2) {
    const auto va = hn::LoadU(d, a + 2 * i), vb = hn::LoadU(d, b + 2 * i);
    const auto prod = hn::MulAdd(hn::Reverse2(d, va), hn::Mul(hn::DupOdd(vb), signs), hn::Mul(va, hn::DupEven(vb)));
    hn::StoreU(hn::Mul(prod, scale), d, a + 2 * i);
  }
#endif
  for (; i < n; ++i) {
    const float ar = a[2 * i], ai = a[2 * i + 1], br = b[2 * i], bi = b[2 * i + 1];
    a[2 * i] = (ar * br - ai * bi) * s;
    a[2 * i + 1] = (ar * bi + ai * br) * s;
  }
}

}  // namespace subq::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <fftw3.h>

#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "src/core/parallel.h"
#include "src/ops/conv/long_conv.h"

namespace subq::ops {

HWY_EXPORT(DirectChannels);
HWY_EXPORT(ComplexMulScale);

namespace {

// FFTW buffers: fftwf_malloc gives the alignment the plans were made for.
struct FftwBuffer {
  explicit FftwBuffer(size_t floats) : p(static_cast<float*>(fftwf_malloc(floats * sizeof(float)))) {
    if (!p) throw Error("causal_long_conv: cannot allocate " + std::to_string(floats * sizeof(float)) + " bytes");
  }
  ~FftwBuffer() { fftwf_free(p); }
  FftwBuffer(const FftwBuffer&) = delete;
  FftwBuffer& operator=(const FftwBuffer&) = delete;
  float* p;
};

struct RealPlans {
  fftwf_plan forward, inverse;
};

// One forward/inverse pair per size, made once and kept until exit: FFTW's planner is not
// thread-safe, its execute-with-new-arrays functions are.
class PlanCache {
 public:
  ~PlanCache() {
    for (auto& [n, p] : plans_) {
      fftwf_destroy_plan(p.forward);
      fftwf_destroy_plan(p.inverse);
    }
  }
  const RealPlans& get(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = plans_.find(n);
    if (it != plans_.end()) return it->second;
    FftwBuffer real(static_cast<size_t>(n)), cplx(static_cast<size_t>(n + 2));
    auto* c = reinterpret_cast<fftwf_complex*>(cplx.p);
    RealPlans p{fftwf_plan_dft_r2c_1d(n, real.p, c, FFTW_ESTIMATE), fftwf_plan_dft_c2r_1d(n, c, real.p, FFTW_ESTIMATE)};
    if (!p.forward || !p.inverse) throw Error("causal_long_conv: FFTW could not plan size " + std::to_string(n));
    return plans_.emplace(n, p).first->second;
  }

 private:
  std::mutex mu_;
  std::map<int, RealPlans> plans_;
};

const RealPlans& plans_for(int n) {
  static PlanCache cache;
  return cache.get(n);
}

// Smallest 2^a 3^b 5^c >= m: sizes FFTW transforms fastest.
int64_t fft_size(int64_t m) {
  int64_t best = int64_t{1} << 62;
  for (int64_t p2 = 1; p2 < 2 * m; p2 *= 2)
    for (int64_t p3 = p2; p3 < 2 * m; p3 *= 3)
      for (int64_t p5 = p3; p5 < 2 * m; p5 *= 5)
        if (p5 >= m) best = std::min(best, p5);
  return best;
}

}  // namespace

// Cost model fitted to `subq bench --only ssm.long_conv` (2-core AVX-512 machine,
// docs/benchmarks.md): the FFT path costs ~0.165 ns per n log2 n point per channel (three
// transforms, the gathers and the product), the direct path ~0.013 ns per multiply-add.
// At T = 4096 this puts the crossover near L = 160 taps.
bool long_conv_uses_fft(int64_t T, int64_t L) {
  const int64_t taps = std::min(T, L);
  const double n = static_cast<double>(fft_size(T + taps - 1));
  return 0.165 * n * std::log2(n) < 0.013 * static_cast<double>(T) * static_cast<double>(taps);
}

void causal_long_conv_direct(int64_t batch, int64_t seqlen, int64_t channels, const float* u, const float* k,
                             int64_t taps, float* y) {
  const int64_t L = std::min(taps, seqlen);
  std::vector<float> kt(static_cast<size_t>(L * channels));
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t j = 0; j < L; ++j) kt[static_cast<size_t>(j * channels + c)] = k[c * taps + j];
  // Tasks: (batch, 64-channel block, 256-token tile), so one long sequence still splits.
  constexpr int64_t kChannelBlock = 64, kTokenTile = 256;
  const int64_t cblocks = (channels + kChannelBlock - 1) / kChannelBlock;
  const int64_t tiles = (seqlen + kTokenTile - 1) / kTokenTile;
  parallel_for(batch * cblocks * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (cblocks * tiles), cb = task / tiles % cblocks, tile = task % tiles;
      const int64_t c0 = cb * kChannelBlock, c1 = std::min(channels, c0 + kChannelBlock);
      const int64_t t0 = tile * kTokenTile, t1 = std::min(seqlen, t0 + kTokenTile);
      HWY_DYNAMIC_DISPATCH(DirectChannels)(u + b * seqlen * channels, kt.data(), L, channels, c0, c1, t0, t1,
                                           y + b * seqlen * channels);
    }
  });
}

void causal_long_conv_fft(int64_t batch, int64_t seqlen, int64_t channels, const float* u, const float* k,
                          int64_t taps, float* y) {
  const int64_t L = std::min(taps, seqlen);
  const int64_t n = fft_size(seqlen + L - 1);
  if (n > (int64_t{1} << 30)) throw Error("causal_long_conv: sequence too long for one FFT: " + std::to_string(seqlen));
  const RealPlans& plans = plans_for(static_cast<int>(n));
  // Floats per column or spectrum, rounded to 64 bytes: FFTW's SIMD plans need every
  // array at the alignment fftwf_malloc gives.
  const int64_t bins = n / 2 + 1, stride = (2 * bins + 15) / 16 * 16;
  const float inv_n = 1.f / static_cast<float>(n);
  // Tasks are blocks of kBlock channels: columns of the token-major u are gathered (and y
  // scattered) a whole row segment at a time, so each cache line is read once, not once
  // per channel. The filters' transforms are made once per block and reused over the batch.
  constexpr int64_t kBlock = 8;
  const int64_t blocks = (channels + kBlock - 1) / kBlock;
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    FftwBuffer cols(static_cast<size_t>(kBlock * stride)), kspec(static_cast<size_t>(kBlock * stride));
    FftwBuffer spec(static_cast<size_t>(stride));
    auto* sc = reinterpret_cast<fftwf_complex*>(spec.p);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t c0 = blk * kBlock, w = std::min(kBlock, channels - c0);
      for (int64_t i = 0; i < w; ++i) {
        float* col = cols.p + i * stride;
        std::copy(k + (c0 + i) * taps, k + (c0 + i) * taps + L, col);
        std::fill(col + L, col + n, 0.f);
        fftwf_execute_dft_r2c(plans.forward, col, reinterpret_cast<fftwf_complex*>(kspec.p + i * stride));
      }
      for (int64_t b = 0; b < batch; ++b) {
        const float* ub = u + b * seqlen * channels + c0;
        for (int64_t t = 0; t < seqlen; ++t)
          for (int64_t i = 0; i < w; ++i) cols.p[i * stride + t] = ub[t * channels + i];
        for (int64_t i = 0; i < w; ++i) {
          float* col = cols.p + i * stride;
          std::fill(col + seqlen, col + n, 0.f);
          fftwf_execute_dft_r2c(plans.forward, col, sc);
          HWY_DYNAMIC_DISPATCH(ComplexMulScale)(spec.p, kspec.p + i * stride, static_cast<size_t>(bins), inv_n);
          fftwf_execute_dft_c2r(plans.inverse, sc, col);
        }
        float* yb = y + b * seqlen * channels + c0;
        for (int64_t t = 0; t < seqlen; ++t)
          for (int64_t i = 0; i < w; ++i) yb[t * channels + i] = cols.p[i * stride + t];
      }
    }
  });
}

void causal_long_conv(const Tensor& u, const Tensor& k, const Tensor& y, LongConvMethod method) {
  check_dtype(u, DType::f32, "causal_long_conv: u");
  check_contiguous(u, "causal_long_conv: u");
  if (u.ndim() != 3) throw Error("causal_long_conv: u must be [B, T, C], found " + u.str());
  check_dtype(y, DType::f32, "causal_long_conv: y");
  check_contiguous(y, "causal_long_conv: y");
  check_shape(y, u.shape(), "causal_long_conv: y");
  check_dtype(k, DType::f32, "causal_long_conv: k");
  check_contiguous(k, "causal_long_conv: k");
  const int64_t B = u.dim(0), T = u.dim(1), C = u.dim(2);
  if (k.ndim() != 2 || k.dim(0) != C || k.dim(1) < 1)
    throw Error("causal_long_conv: k must be [" + std::to_string(C) + ", L >= 1], found " + k.str());
  if (u.raw_data() == y.raw_data()) throw Error("causal_long_conv: u and y must not alias");
  if (B == 0 || T == 0 || C == 0) return;
  const int64_t L = k.dim(1);
  const bool fft = method == LongConvMethod::fft || (method == LongConvMethod::automatic && long_conv_uses_fft(T, L));
  if (fft) causal_long_conv_fft(B, T, C, u.data<float>(), k.data<float>(), L, y.mutable_data<float>());
  else causal_long_conv_direct(B, T, C, u.data<float>(), k.data<float>(), L, y.mutable_data<float>());
}

}  // namespace subq::ops
#endif  // HWY_ONCE
