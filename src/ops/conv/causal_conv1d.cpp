// Causal depthwise conv1d (see causal_conv1d.h). Vectorised over channels, one lane per
// channel; a tile of tokens is walked row by row, each output row over all channels, so
// that the input and output rows stream front to back and the next input row can be
// prefetched as a whole. Work is split over (batch, token tile) so prefill of one long
// sequence still uses every thread.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/conv/causal_conv1d.cpp"
#include <cstdint>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Output row i, channels [c0, c0 + Lanes(d)). rows[i + k] is the input row of tap k for
// output i; wt is the filter transposed to [W, D].
template <int W, class D>
HWY_INLINE void ConvVector(D d, int64_t c0, int64_t i, const float* const* rows, const float* wt, int64_t channels,
                           const float* bias, bool silu, float* y) {
  using V = hn::Vec<D>;
  V acc = bias ? hn::LoadU(d, bias + c0) : hn::Zero(d);
  for (int k = 0; k < W; ++k) acc = hn::MulAdd(hn::LoadU(d, wt + k * channels + c0), hn::LoadU(d, rows[i + k] + c0), acc);
  if (silu) acc = hn::Div(acc, hn::Add(hn::Set(d, 1.f), hn::Exp(d, hn::Neg(acc))));
  hn::StoreU(acc, d, y + c0);
}

// Output rows [0, count), each over all channels, while the input row that the next output
// row adds is prefetched. Walking all rows per vector of channels instead (the taps kept
// in registers) touched every row of the tile per 64 bytes, which the hardware prefetchers
// do not follow: 1.4-2.2x slower at 3-4K channels and 1-4K tokens on a Zen 4
// (docs/benchmarks.md).
template <int W>
void ConvTileW(const float* const* rows, int64_t count, const float* wt, int64_t channels, const float* bias,
               bool silu, float* y, int64_t y_stride) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t i = 0; i < count; ++i) {
    float* yi = y + i * y_stride;
    const float* next = i + 1 < count ? rows[i + W] : nullptr;
    int64_t c = 0;
    for (; c + lanes <= channels; c += lanes) {
      if (next) __builtin_prefetch(next + c);
      ConvVector<W>(d, c, i, rows, wt, channels, bias, silu, yi);
    }
    for (; c < channels; ++c) ConvVector<W>(d1, c, i, rows, wt, channels, bias, silu, yi);
  }
}

void ConvTile(int width, const float* const* rows, int64_t count, const float* wt, int64_t channels,
              const float* bias, bool silu, float* y, int64_t y_stride) {
  switch (width) {
    case 2: return ConvTileW<2>(rows, count, wt, channels, bias, silu, y, y_stride);
    case 3: return ConvTileW<3>(rows, count, wt, channels, bias, silu, y, y_stride);
    case 4: return ConvTileW<4>(rows, count, wt, channels, bias, silu, y, y_stride);
    case 5: return ConvTileW<5>(rows, count, wt, channels, bias, silu, y, y_stride);
    case 6: return ConvTileW<6>(rows, count, wt, channels, bias, silu, y, y_stride);
    case 7: return ConvTileW<7>(rows, count, wt, channels, bias, silu, y, y_stride);
    default: return ConvTileW<8>(rows, count, wt, channels, bias, silu, y, y_stride);
  }
}

}  // namespace subq::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>
#include <cstring>
#include <string>

#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/conv/causal_conv1d.h"

namespace subq::ops {

HWY_EXPORT(ConvTile);

namespace {

constexpr int64_t kTokenTile = 64;

struct ConvBuffers;

}  // namespace

void causal_conv1d(int64_t batch, int64_t seqlen, int64_t channels, int width, SeqView x, const float* w,
                   const float* bias, float* state, bool silu, MutSeqView y) {
  if (width < kConvMinWidth || width > kConvMaxWidth)
    throw Error("causal_conv1d: width must be in [2, 8], found " + std::to_string(width));
  if (batch <= 0 || seqlen <= 0 || channels <= 0) return;
  const int64_t ctx = width - 1;
  // The filter transposed to [width, channels], then a row of zeros for the left context
  // when there is no state; from per-thread scratch, as a decode step runs this per layer.
  const Scratch<ConvBuffers, float> buffers(static_cast<size_t>((width + 1) * channels));
  float* wt = buffers.data();
  for (int64_t c = 0; c < channels; ++c)
    for (int k = 0; k < width; ++k) wt[k * channels + c] = w[c * width + k];
  float* zeros = wt + width * channels;
  if (!state) std::fill_n(zeros, channels, 0.f);

  const int64_t tiles = (seqlen + kTokenTile - 1) / kTokenTile;
  // Enough outputs per thread that a decode step does not pay for waking the pool.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / (std::min(seqlen, kTokenTile) * channels));
  parallel_for(batch * tiles, grain, [&](int64_t begin, int64_t end) {
    const float* rows[kTokenTile + kConvMaxWidth];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, t0 = (task % tiles) * kTokenTile;
      const int64_t count = std::min(kTokenTile, seqlen - t0);
      // Input row s of the sequence, s < 0 meaning the left context.
      for (int64_t i = 0; i < count + ctx; ++i) {
        const int64_t s = t0 - ctx + i;
        if (s >= 0) rows[i] = x.data + b * x.batch_stride + s * x.token_stride;
        else if (state) rows[i] = state + (b * ctx + ctx + s) * channels;
        else rows[i] = zeros;
      }
      HWY_DYNAMIC_DISPATCH(ConvTile)(width, rows, count, wt, channels, bias, silu,
                                     y.data + b * y.batch_stride + t0 * y.token_stride, y.token_stride);
    }
  });

  if (!state) return;
  // The new window is the last W-1 rows of (old window ++ x). Row j comes from old row
  // j + T when that exists, so copying in increasing j never reads an overwritten row.
  for (int64_t b = 0; b < batch; ++b) {
    float* win = state + b * ctx * channels;
    for (int64_t j = 0; j < ctx; ++j) {
      const int64_t s = seqlen - ctx + j;
      const float* src = s >= 0 ? x.data + b * x.batch_stride + s * x.token_stride : win + (j + seqlen) * channels;
      std::memcpy(win + j * channels, src, static_cast<size_t>(channels) * sizeof(float));
    }
  }
}

namespace {

// Checks w and returns its width; accepts [D, W] and Hugging Face's [D, 1, W].
int check_filter(const Tensor& w, int64_t channels, const char* who) {
  const std::string name = std::string(who) + ": w";
  check_dtype(w, DType::f32, name.c_str());
  check_contiguous(w, name.c_str());
  const bool ok = (w.ndim() == 2 || (w.ndim() == 3 && w.dim(1) == 1)) && w.dim(0) == channels;
  if (!ok) throw Error(name + " must be [" + std::to_string(channels) + ", W] or [" + std::to_string(channels) +
                       ", 1, W], found " + w.str());
  const int64_t width = w.dim(-1);
  if (width < kConvMinWidth || width > kConvMaxWidth)
    throw Error(name + " width must be in [2, 8], found " + w.str());
  return static_cast<int>(width);
}

void check_bias_state(const Tensor& bias, const Tensor& state, int64_t batch, int64_t channels, int width,
                      const char* who) {
  const std::string w(who);
  if (bias.defined()) {
    check_dtype(bias, DType::f32, (w + ": bias").c_str());
    check_shape(bias, Shape{channels}, (w + ": bias").c_str());
  }
  if (state.defined()) {
    check_dtype(state, DType::f32, (w + ": state").c_str());
    check_contiguous(state, (w + ": state").c_str());
    check_shape(state, Shape{batch, width - 1, channels}, (w + ": state").c_str());
    if (!state.writable()) throw Error(w + ": state must be writable");
  }
}

}  // namespace

void causal_conv1d(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& state, bool silu,
                   const Tensor& y) {
  const char* who = "causal_conv1d";
  check_dtype(x, DType::f32, "causal_conv1d: x");
  if (x.ndim() != 3) throw Error(std::string(who) + ": x must be [B, T, D], found " + x.str());
  if (x.stride(2) != 1) throw Error(std::string(who) + ": x must have contiguous channels, found strides of " + x.str());
  check_dtype(y, DType::f32, "causal_conv1d: y");
  check_contiguous(y, "causal_conv1d: y");
  check_shape(y, x.shape(), "causal_conv1d: y");
  const int64_t B = x.dim(0), T = x.dim(1), D = x.dim(2);
  const int width = check_filter(w, D, who);
  check_bias_state(bias, state, B, D, width, who);
  causal_conv1d(B, T, D, width, SeqView{x.data<float>(), x.stride(0), x.stride(1)}, w.data<float>(),
                bias.defined() ? bias.data<float>() : nullptr, state.defined() ? state.mutable_data<float>() : nullptr,
                silu, MutSeqView{y.mutable_data<float>(), T * D, D});
}

void causal_conv1d_step(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& state, bool silu,
                        const Tensor& y) {
  const char* who = "causal_conv1d_step";
  check_dtype(x, DType::f32, "causal_conv1d_step: x");
  check_contiguous(x, "causal_conv1d_step: x");
  if (x.ndim() != 2) throw Error(std::string(who) + ": x must be [B, D], found " + x.str());
  check_dtype(y, DType::f32, "causal_conv1d_step: y");
  check_contiguous(y, "causal_conv1d_step: y");
  check_shape(y, x.shape(), "causal_conv1d_step: y");
  const int64_t B = x.dim(0), D = x.dim(1);
  const int width = check_filter(w, D, who);
  if (!state.defined()) throw Error(std::string(who) + ": state is required for the decode step");
  check_bias_state(bias, state, B, D, width, who);
  causal_conv1d(B, 1, D, width, SeqView{x.data<float>(), D, D}, w.data<float>(),
                bias.defined() ? bias.data<float>() : nullptr, state.mutable_data<float>(), silu,
                MutSeqView{y.mutable_data<float>(), D, D});
}

}  // namespace subq::ops
#endif  // HWY_ONCE
