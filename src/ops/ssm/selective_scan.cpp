// Selective scan kernels (see selective_scan.h). The cost is one exp per (token, channel,
// state element); everything else is a few FMAs, so the kernels keep the state of a channel
// block in L1 (transposed so that a vector load gets the lanes it needs) and spend their
// time in Highway's vector exp. Two lane mappings exist so that both can be measured:
//   channels: lane = channel, loop over n inside; no horizontal sums, B[n]/C[n] broadcast.
//   state:    lane = state element, loop over channels; one horizontal sum per (t, d).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/ssm/selective_scan.cpp"
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"
#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/ssm/selective_scan.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr float kLog2e = 1.44269504088896341f;

// softplus(v) = max(v, 0) + log1p(exp(-|v|)): exact form, no overflow.
template <class DF, class V>
HWY_INLINE V Softplus(DF d, V v) {
  return hn::Add(hn::Max(v, hn::Zero(d)), hn::Log1p(d, hn::Exp(d, hn::Neg(hn::Abs(v)))));
}

template <class DF, class V>
HWY_INLINE V Silu(DF d, V v) {
  return hn::Div(v, hn::Add(hn::Set(d, 1.f), hn::Exp(d, hn::Neg(v))));
}

// 2^x for x already clamped to [-126, 127]: round-to-nearest by the 1.5 * 2^23 trick, the
// degree-6 Taylor polynomial of 2^f on f in [-0.5, 0.5] (relative error <= 1.2e-7), and
// the exponent bits shifted into place. Taylor rather than minimax on purpose: it is
// exact at f = 0, so decays close to 1 (long memories) carry no systematic bias that a
// recurrence would accumulate over thousands of steps. About two thirds of the
// instructions of hn::Exp, whose overflow handling the clamp makes unnecessary.
template <class DF, class V>
HWY_INLINE V Exp2Clamped(DF d, V x) {
  const hn::RebindToSigned<DF> di;
  const V magic = hn::Set(d, 12582912.f + 127.f);
  const V biased = hn::Add(x, magic);
  const V f = hn::Sub(x, hn::Sub(biased, magic));
  V p = hn::Set(d, 1.5403530393381606e-4f);
  p = hn::MulAdd(p, f, hn::Set(d, 1.3333558146428443e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 9.6181291076284772e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.5504108664821580e-2f));
  p = hn::MulAdd(p, f, hn::Set(d, 0.24022650695910071f));
  p = hn::MulAdd(p, f, hn::Set(d, 0.69314718055994531f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.f));
  const V scale = hn::BitCast(d, hn::ShiftLeft<23>(hn::BitCast(di, biased)));
  return hn::Mul(p, scale);
}

template <class DF>
HWY_INLINE hn::Vec<DF> Delta(DF d, const SelectiveScanArgs& a, const float* dt, hn::Vec<DF> bias) {
  const auto v = hn::Add(hn::LoadU(d, dt), bias);
  return a.dt_softplus ? Softplus(d, v) : v;
}

// Tokens per chunk of the two-phase channel kernel: the chunk's decays (N vectors per
// token) stay within ~32 KiB of L1.
int64_t ChunkTokens(int64_t N) { return std::max<int64_t>(1, 256 / N); }
constexpr int64_t kPrefetchTokens = 16;

// Lane = channel. Scans channels [c0, c0 + Lanes(d)) of batch b, all in group g, a chunk
// of tokens at a time in two phases: first everything that does not depend on the state
// (softplus, the exps of the decays, D x, the gate), which has no dependency chains and
// runs at the vector units' throughput; then the recurrence itself, two FMAs per state
// element. Fused in one loop, the exp's long dependency chain per element left the loop
// latency-bound. hl and at hold the block's state and A as [N][lane]; work holds
// ChunkTokens(N) * (N + 4) vectors. kN > 0: N = kN and the state stays in registers.
template <int kN, class DF>
HWY_INLINE void ScanChannelBlock(DF d, const SelectiveScanArgs& a, int64_t b, int64_t c0, int64_t g, float* hl,
                                 float* at, float* work) {
  using V = hn::Vec<DF>;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const int64_t N = kN > 0 ? kN : a.state_dim, Dn = a.channels, chunk = ChunkTokens(N);
  float* h = a.h + (b * Dn + c0) * N;
  for (int64_t l = 0; l < L; ++l)
    for (int64_t n = 0; n < N; ++n) {
      hl[n * L + l] = h[l * N + n];
      at[n * L + l] = a.A[(c0 + l) * N + n] * kLog2e;
    }
  float* decays = work;                  // [chunk][N][lane]
  float* dxs = decays + chunk * N * L;   // [chunk][lane]: delta * x
  float* skips = dxs + chunk * L;        // [chunk][lane]: D * x
  float* gates = skips + chunk * L;      // [chunk][lane]: silu(z)
  float* deltas = gates + chunk * L;     // [chunk][lane]
  const V bias = a.dt_bias ? hn::LoadU(d, a.dt_bias + c0) : hn::Zero(d);
  const V dskip = a.D ? hn::LoadU(d, a.D + c0) : hn::Zero(d);
  const V lo = hn::Set(d, -126.f), hi = hn::Set(d, 127.f);
  const float* x = a.x.data + b * a.x.batch_stride + c0;
  const float* dt = a.dt.data + b * a.dt.batch_stride + c0;
  const float* z = a.z.data ? a.z.data + b * a.z.batch_stride + c0 : nullptr;
  const float* Bm = a.B.data + b * a.B.batch_stride + g * N;
  const float* Cm = a.C.data + b * a.C.batch_stride + g * N;
  float* y = a.y.data + b * a.y.batch_stride + c0;
  V hreg[kN > 0 ? kN : 1];
  if constexpr (kN > 0)
    for (int n = 0; n < kN; ++n) hreg[n] = hn::Load(d, hl + n * L);
  for (int64_t t0 = 0; t0 < a.seqlen; t0 += chunk) {
    const int64_t count = std::min(chunk, a.seqlen - t0);
    // Phase 1a, per token: softplus and the gate. Their long dependency chains (exp, log,
    // division) overlap only when the tokens follow each other without the N decays between.
    for (int64_t i = 0; i < count; ++i) {
      const int64_t t = t0 + i;
      // Rows are a page or more apart when D is large, where hardware prefetchers stop:
      // fetch rows kPrefetchTokens ahead.
      if (t + kPrefetchTokens < a.seqlen) {
        __builtin_prefetch(dt + (t + kPrefetchTokens) * a.dt.token_stride);
        __builtin_prefetch(x + (t + kPrefetchTokens) * a.x.token_stride);
        if (z) __builtin_prefetch(z + (t + kPrefetchTokens) * a.z.token_stride);
      }
      const V delta = Delta(d, a, dt + t * a.dt.token_stride, bias);
      const V xv = hn::LoadU(d, x + t * a.x.token_stride);
      hn::Store(delta, d, deltas + i * L);
      hn::Store(hn::Mul(delta, xv), d, dxs + i * L);
      hn::Store(hn::Mul(dskip, xv), d, skips + i * L);
      if (z) hn::Store(Silu(d, hn::LoadU(d, z + t * a.z.token_stride)), d, gates + i * L);
    }
    // Phase 1b: the decays, N independent exps per token.
    for (int64_t i = 0; i < count; ++i) {
      const V delta = hn::Load(d, deltas + i * L);
      float* dec = decays + i * N * L;
      for (int64_t n = 0; n < N; ++n)
        hn::Store(Exp2Clamped(d, hn::Min(hn::Max(hn::Mul(delta, hn::Load(d, at + n * L)), lo), hi)), d, dec + n * L);
    }
    // Phase 2: the recurrence.
    for (int64_t i = 0; i < count; ++i) {
      const int64_t t = t0 + i;
      const V dx = hn::Load(d, dxs + i * L);
      const float* Bt = Bm + t * a.B.token_stride;
      const float* Ct = Cm + t * a.C.token_stride;
      const float* dec = decays + i * N * L;
      // Four partial sums of C h keep the output's FMA chain short.
      V acc[4] = {hn::Load(d, skips + i * L), hn::Zero(d), hn::Zero(d), hn::Zero(d)};
      const auto update = [&](int64_t n, V hv) {
        hv = hn::MulAdd(hn::Load(d, dec + n * L), hv, hn::Mul(dx, hn::Set(d, Bt[n])));
        acc[n & 3] = hn::MulAdd(hv, hn::Set(d, Ct[n]), acc[n & 3]);
        return hv;
      };
      if constexpr (kN > 0) {
#pragma GCC unroll 16
        for (int n = 0; n < kN; ++n) hreg[n] = update(n, hreg[n]);
      } else {
        for (int64_t n = 0; n < N; ++n) hn::Store(update(n, hn::Load(d, hl + n * L)), d, hl + n * L);
      }
      V out = hn::Add(hn::Add(acc[0], acc[1]), hn::Add(acc[2], acc[3]));
      if (z) out = hn::Mul(out, hn::Load(d, gates + i * L));
      hn::StoreU(out, d, y + t * a.y.token_stride);
    }
  }
  if constexpr (kN > 0)
    for (int n = 0; n < kN; ++n) hn::Store(hreg[n], d, hl + n * L);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t n = 0; n < N; ++n) h[l * N + n] = hl[n * L + l];
}

struct ChannelScratch;

void ScanChannels(const SelectiveScanArgs& a) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const int64_t per_group = a.channels / a.groups;
  const int64_t blocks = (per_group + L - 1) / L;
  // At least 1K (token, channel, state) updates per range: a Mamba-130m decode step's 24K
  // updates run on all 16 threads of a Xeon host, 17-18 us a step against 23-30 us on the
  // 6 threads that ranges of 4K gave it (per-call timings, docs/benchmarks.md). A step's
  // state and A come back from memory (the weights streamed since evicted them), so the
  // step is worth more threads than its arithmetic suggests.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 10) / (a.seqlen * L * a.state_dim));
  parallel_for(a.batch * a.groups * blocks, grain, [&](int64_t begin, int64_t end) {
    const int64_t N = a.state_dim, chunk = ChunkTokens(N);
    const Scratch<ChannelScratch, float> scratch(static_cast<size_t>((2 * N + chunk * (N + 4)) * L));
    float* hl = scratch.data();
    float* at = hl + N * L;
    float* work = at + N * L;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (a.groups * blocks), g = task / blocks % a.groups, j = task % blocks;
      const int64_t c0 = g * per_group + j * L;
      if (j * L + L > per_group) {
        for (int64_t c = c0; c < (g + 1) * per_group; ++c) ScanChannelBlock<0>(d1, a, b, c, g, hl, at, work);
      } else if (a.state_dim == 16) {  // Mamba's N: 16 state vectors fit the register file
        ScanChannelBlock<16>(d, a, b, c0, g, hl, at, work);
      } else {
        ScanChannelBlock<0>(d, a, b, c0, g, hl, at, work);
      }
    }
  });
}

// Channels per task of the lane-per-state kernel.
constexpr int64_t kStateBlock = 16;

// Softplus(dt + bias) and silu(z) of channels [c0, c1) at one token, vectorised over
// the channels, into deltas and gates.
void BlockDeltasAndGates(const SelectiveScanArgs& a, int64_t c0, int64_t c1, const float* dt, const float* z,
                         float* deltas, float* gates) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const auto run = [&](auto tag, int64_t c) {
    const auto bias = a.dt_bias ? hn::LoadU(tag, a.dt_bias + c) : hn::Zero(tag);
    hn::StoreU(Delta(tag, a, dt + c, bias), tag, deltas + (c - c0));
    if (z) hn::StoreU(Silu(tag, hn::LoadU(tag, z + c)), tag, gates + (c - c0));
  };
  int64_t c = c0;
  for (; c + L <= c1; c += L) run(d, c);
  for (; c < c1; ++c) run(d1, c);
}

// Lane = state element. Scans up to kStateBlock channels [c0, c1) of batch b in group g;
// N is padded with zeros to Np (a multiple of the lanes), which leaves padded state at zero.
void ScanStateBlock(const SelectiveScanArgs& a, int64_t b, int64_t c0, int64_t c1, int64_t g, int64_t Np, float* hs,
                    float* as, float* bp, float* cp) {
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const int64_t N = a.state_dim, Dn = a.channels, width = c1 - c0;
  std::fill_n(hs, width * Np, 0.f);
  std::fill_n(as, width * Np, 0.f);
  std::fill_n(bp, Np, 0.f);
  std::fill_n(cp, Np, 0.f);
  for (int64_t i = 0; i < width; ++i) {
    std::memcpy(hs + i * Np, a.h + (b * Dn + c0 + i) * N, static_cast<size_t>(N) * sizeof(float));
    for (int64_t n = 0; n < N; ++n) as[i * Np + n] = a.A[(c0 + i) * N + n] * kLog2e;
  }
  const V lo = hn::Set(d, -126.f), hi = hn::Set(d, 127.f);
  float deltas[kStateBlock], gates[kStateBlock];
  for (int64_t t = 0; t < a.seqlen; ++t) {
    // B and C rows are read in place when N fills whole vectors, else through the padding.
    const float* Bt = a.B.data + b * a.B.batch_stride + t * a.B.token_stride + g * N;
    const float* Ct = a.C.data + b * a.C.batch_stride + t * a.C.token_stride + g * N;
    if (Np != N) {
      std::memcpy(bp, Bt, static_cast<size_t>(N) * sizeof(float));
      std::memcpy(cp, Ct, static_cast<size_t>(N) * sizeof(float));
      Bt = bp;
      Ct = cp;
    }
    const float* x = a.x.data + b * a.x.batch_stride + t * a.x.token_stride;
    const float* dt = a.dt.data + b * a.dt.batch_stride + t * a.dt.token_stride;
    const float* z = a.z.data ? a.z.data + b * a.z.batch_stride + t * a.z.token_stride : nullptr;
    float* y = a.y.data + b * a.y.batch_stride + t * a.y.token_stride;
    BlockDeltasAndGates(a, c0, c1, dt, z, deltas, gates);
    for (int64_t c = c0; c < c1; ++c) {
      const float delta = deltas[c - c0];
      const V dv = hn::Set(d, delta), dx = hn::Set(d, delta * x[c]);
      float* h = hs + (c - c0) * Np;
      const float* A = as + (c - c0) * Np;
      V acc = hn::Zero(d);
      for (int64_t n = 0; n < Np; n += L) {
        const V decay = Exp2Clamped(d, hn::Min(hn::Max(hn::Mul(dv, hn::Load(d, A + n)), lo), hi));
        const V hv = hn::MulAdd(decay, hn::Load(d, h + n), hn::Mul(dx, hn::LoadU(d, Bt + n)));
        hn::Store(hv, d, h + n);
        acc = hn::MulAdd(hv, hn::LoadU(d, Ct + n), acc);
      }
      float out = hn::GetLane(hn::SumOfLanes(d, acc)) + (a.D ? a.D[c] * x[c] : 0.f);
      if (z) out *= gates[c - c0];
      y[c] = out;
    }
  }
  for (int64_t i = 0; i < width; ++i)
    std::memcpy(a.h + (b * Dn + c0 + i) * N, hs + i * Np, static_cast<size_t>(N) * sizeof(float));
}

struct StateScratch;

void ScanState(const SelectiveScanArgs& a) {
  const hn::ScalableTag<float> d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const int64_t Np = (a.state_dim + L - 1) / L * L;
  const int64_t per_group = a.channels / a.groups;
  const int64_t blocks = (per_group + kStateBlock - 1) / kStateBlock;
  parallel_for(a.batch * a.groups * blocks, 1, [&](int64_t begin, int64_t end) {
    const Scratch<StateScratch, float> scratch(static_cast<size_t>(2 * kStateBlock * Np + 2 * Np));
    float* hs = scratch.data();
    float* as = hs + kStateBlock * Np;
    float* bp = as + kStateBlock * Np;
    float* cp = bp + Np;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (a.groups * blocks), g = task / blocks % a.groups, j = task % blocks;
      const int64_t c0 = g * per_group + j * kStateBlock;
      const int64_t c1 = std::min(c0 + kStateBlock, (g + 1) * per_group);
      ScanStateBlock(a, b, c0, c1, g, Np, hs, as, bp, cp);
    }
  });
}

}  // namespace subq::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <string>

namespace subq::ops {

HWY_EXPORT(ScanChannels);
HWY_EXPORT(ScanState);

void selective_scan(const SelectiveScanArgs& a) {
  if (a.state_dim < 1 || a.state_dim > kScanMaxState)
    throw Error("selective_scan: state size N must be in [1, 256], found " + std::to_string(a.state_dim));
  if (a.groups < 1 || a.channels % a.groups != 0)
    throw Error("selective_scan: groups " + std::to_string(a.groups) + " must divide channels " +
                std::to_string(a.channels));
  if (a.batch <= 0 || a.seqlen <= 0 || a.channels <= 0) return;
  // Measured (docs/benchmarks.md): a lane per channel wins up to N = 128, a lane per
  // state element from N = 192, where its per-channel overhead is spread over more work.
  const bool state_lanes = a.lanes == ScanLanes::state || (a.lanes == ScanLanes::automatic && a.state_dim > 128);
  if (state_lanes) HWY_DYNAMIC_DISPATCH(ScanState)(a);
  else HWY_DYNAMIC_DISPATCH(ScanChannels)(a);
}

namespace {

void check_seq(const Tensor& t, int64_t B, int64_t T, int64_t D, const char* what) {
  check_dtype(t, DType::f32, what);
  check_contiguous(t, what);
  check_shape(t, Shape{B, T, D}, what);
}

void check_vec(const Tensor& t, int64_t n, const char* what) {
  check_dtype(t, DType::f32, what);
  check_contiguous(t, what);
  check_shape(t, Shape{n}, what);
}

// B or C: [B, T, N] (one group) or [B, T, G, N]; returns G.
int64_t check_bc(const Tensor& t, int64_t B, int64_t T, int64_t N, const char* what) {
  check_dtype(t, DType::f32, what);
  check_contiguous(t, what);
  if (t.ndim() == 3) {
    check_shape(t, Shape{B, T, N}, what);
    return 1;
  }
  if (t.ndim() != 4 || t.dim(0) != B || t.dim(1) != T || t.dim(3) != N || t.dim(2) < 1)
    throw Error(std::string(what) + " must be [" + std::to_string(B) + ", " + std::to_string(T) + ", " +
                std::to_string(N) + "] or [" + std::to_string(B) + ", " + std::to_string(T) + ", G, " +
                std::to_string(N) + "], found " + t.str());
  return t.dim(2);
}

}  // namespace

void selective_scan(const Tensor& x, const Tensor& dt, const Tensor& dt_bias, bool dt_softplus, const Tensor& A,
                    const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& h,
                    const Tensor& y, ScanLanes lanes) {
  check_dtype(x, DType::f32, "selective_scan: x");
  if (x.ndim() != 3) throw Error("selective_scan: x must be [B, T, D], found " + x.str());
  const int64_t Bn = x.dim(0), T = x.dim(1), Dn = x.dim(2);
  check_seq(x, Bn, T, Dn, "selective_scan: x");
  check_seq(dt, Bn, T, Dn, "selective_scan: dt");
  check_seq(y, Bn, T, Dn, "selective_scan: y");
  if (z.defined()) check_seq(z, Bn, T, Dn, "selective_scan: z");
  if (dt_bias.defined()) check_vec(dt_bias, Dn, "selective_scan: dt_bias");
  if (D.defined()) check_vec(D, Dn, "selective_scan: D");
  check_dtype(A, DType::f32, "selective_scan: A");
  check_contiguous(A, "selective_scan: A");
  if (A.ndim() != 2 || A.dim(0) != Dn)
    throw Error("selective_scan: A must be [" + std::to_string(Dn) + ", N], found " + A.str());
  const int64_t N = A.dim(1);
  const int64_t G = check_bc(B, Bn, T, N, "selective_scan: B");
  if (check_bc(C, Bn, T, N, "selective_scan: C") != G || B.ndim() != C.ndim())
    throw Error("selective_scan: C " + C.str() + " must have the shape of B " + B.str());
  check_dtype(h, DType::f32, "selective_scan: h");
  check_contiguous(h, "selective_scan: h");
  check_shape(h, Shape{Bn, Dn, N}, "selective_scan: h");
  SelectiveScanArgs a;
  a.batch = Bn;
  a.seqlen = T;
  a.channels = Dn;
  a.state_dim = N;
  a.groups = G;
  a.x = {x.data<float>(), T * Dn, Dn};
  a.dt = {dt.data<float>(), T * Dn, Dn};
  a.dt_bias = dt_bias.defined() ? dt_bias.data<float>() : nullptr;
  a.dt_softplus = dt_softplus;
  a.A = A.data<float>();
  a.B = {B.data<float>(), T * G * N, G * N};
  a.C = {C.data<float>(), T * G * N, G * N};
  a.D = D.defined() ? D.data<float>() : nullptr;
  a.z = z.defined() ? SeqView{z.data<float>(), T * Dn, Dn} : SeqView{};
  a.h = h.mutable_data<float>();
  a.y = {y.mutable_data<float>(), T * Dn, Dn};
  a.lanes = lanes;
  selective_scan(a);
}

}  // namespace subq::ops
#endif  // HWY_ONCE
