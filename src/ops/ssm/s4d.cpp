// S4D / diagonal S4 (see s4d.h). The recurrence puts one channel in each lane and walks
// its M complex modes in an inner loop (state and parameters transposed to [M][lane] in L1).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/ssm/s4d.cpp"
#include <cstdint>

#include "hwy/aligned_allocator.h"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "src/core/parallel.h"
#include "src/ops/ssm/s4d.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Channels [c0, c0 + Lanes(d)) of sequence b. p holds 8 aligned arrays of M * Lanes(d):
// re/im of dA, dB, C and of the state.
template <class DF>
HWY_INLINE void ScanBlock(DF d, const S4DDiscrete& s, int64_t c0, int64_t seqlen, const float* u, const float* D,
                          float* state, float* y, float* p) {
  using V = hn::Vec<DF>;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d)), M = s.modes, H = s.channels;
  float *ar = p, *ai = ar + M * L, *br = ai + M * L, *bi = br + M * L, *cr = bi + M * L, *ci = cr + M * L;
  float *sr = ci + M * L, *si = sr + M * L;
  for (int64_t l = 0; l < L; ++l)
    for (int64_t m = 0; m < M; ++m) {
      const int64_t i = (c0 + l) * M + m, o = m * L + l;
      ar[o] = s.dA[i].real(), ai[o] = s.dA[i].imag();
      br[o] = s.dB[i].real(), bi[o] = s.dB[i].imag();
      cr[o] = s.C[i].real(), ci[o] = s.C[i].imag();
      sr[o] = state[2 * i], si[o] = state[2 * i + 1];
    }
  const V dskip = D ? hn::LoadU(d, D + c0) : hn::Zero(d);
  const V two = hn::Set(d, 2.f);
  for (int64_t t = 0; t < seqlen; ++t) {
    const V uv = hn::LoadU(d, u + t * H + c0);
    V acc = hn::Zero(d);
    for (int64_t m = 0; m < M; ++m) {
      const int64_t o = m * L;
      const V a_r = hn::Load(d, ar + o), a_i = hn::Load(d, ai + o);
      const V s_r = hn::Load(d, sr + o), s_i = hn::Load(d, si + o);
      const V n_r = hn::MulAdd(a_r, s_r, hn::NegMulAdd(a_i, s_i, hn::Mul(hn::Load(d, br + o), uv)));
      const V n_i = hn::MulAdd(a_r, s_i, hn::MulAdd(a_i, s_r, hn::Mul(hn::Load(d, bi + o), uv)));
      hn::Store(n_r, d, sr + o);
      hn::Store(n_i, d, si + o);
      acc = hn::NegMulAdd(hn::Load(d, ci + o), n_i, hn::MulAdd(hn::Load(d, cr + o), n_r, acc));
    }
    hn::StoreU(hn::MulAdd(two, acc, hn::Mul(dskip, uv)), d, y + t * H + c0);
  }
  for (int64_t l = 0; l < L; ++l)
    for (int64_t m = 0; m < M; ++m) {
      const int64_t i = (c0 + l) * M + m, o = m * L + l;
      state[2 * i] = sr[o], state[2 * i + 1] = si[o];
    }
}

void Scan(const S4DDiscrete& s, int64_t batch, int64_t seqlen, const float* u, const float* D, float* state,
          float* y) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d)), H = s.channels, M = s.modes;
  const int64_t blocks = (H + L - 1) / L;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / (seqlen * L * M));
  parallel_for(batch * blocks, grain, [&](int64_t begin, int64_t end) {
    auto scratch = hwy::AllocateAligned<float>(static_cast<size_t>(8 * M * L));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, c0 = task % blocks * L;
      const float* ub = u + b * seqlen * H;
      float* yb = y + b * seqlen * H;
      float* sb = state + b * H * M * 2;
      if (c0 + L <= H) {
        ScanBlock(d, s, c0, seqlen, ub, D, sb, yb, scratch.get());
      } else {
        for (int64_t c = c0; c < H; ++c) ScanBlock(d1, s, c, seqlen, ub, D, sb, yb, scratch.get());
      }
    }
  });
}

}  // namespace subq::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

namespace subq::ops {

HWY_EXPORT(Scan);

namespace {

// Eigenvalues of a symmetric n x n matrix (row-major, destroyed) by cyclic Jacobi
// rotations; ascending.
std::vector<double> symmetric_eigenvalues(std::vector<double> a, int64_t n) {
  auto at = [&](int64_t r, int64_t c) -> double& { return a[static_cast<size_t>(r * n + c)]; };
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0, total = 0;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < n; ++c) (r == c ? total : off) += at(r, c) * at(r, c);
    if (off <= 1e-30 * (total + off)) break;
    for (int64_t p = 0; p < n; ++p)
      for (int64_t q = p + 1; q < n; ++q) {
        if (at(p, q) == 0) continue;
        const double theta = (at(q, q) - at(p, p)) / (2 * at(p, q));
        const double t = (theta >= 0 ? 1 : -1) / (std::abs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int64_t k = 0; k < n; ++k) {
          const double kp = at(k, p), kq = at(k, q);
          at(k, p) = c * kp - s * kq;
          at(k, q) = s * kp + c * kq;
        }
        for (int64_t k = 0; k < n; ++k) {
          const double pk = at(p, k), qk = at(q, k);
          at(p, k) = c * pk - s * qk;
          at(q, k) = s * pk + c * qk;
        }
      }
  }
  std::vector<double> ev(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ev[static_cast<size_t>(i)] = at(i, i);
  std::sort(ev.begin(), ev.end());
  return ev;
}

// S4D-LegS: HiPPO-LegS is A + P P^T = -1/2 I + S with S skew-symmetric,
// S[n, k] = -sqrt((2n+1)(2k+1)) / 2 for n > k. Its eigenvalues +-i w are found from the
// symmetric positive semi-definite -S^2 (eigenvalues w^2, each twice).
std::vector<std::complex<double>> legs_diagonal(int64_t N) {
  std::vector<double> S(static_cast<size_t>(N * N), 0.0);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < N; ++c)
      if (r != c) S[static_cast<size_t>(r * N + c)] = (r > c ? -0.5 : 0.5) * std::sqrt((2.0 * r + 1) * (2.0 * c + 1));
  std::vector<double> neg_sq(static_cast<size_t>(N * N), 0.0);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < N; ++c) {
      double acc = 0;
      for (int64_t k = 0; k < N; ++k) acc += S[static_cast<size_t>(r * N + k)] * S[static_cast<size_t>(k * N + c)];
      neg_sq[static_cast<size_t>(r * N + c)] = -acc;
    }
  const std::vector<double> ev = symmetric_eigenvalues(std::move(neg_sq), N);
  std::vector<std::complex<double>> A;
  for (int64_t m = 0; m < N / 2; ++m) A.emplace_back(-0.5, std::sqrt(std::max(0.0, ev[static_cast<size_t>(2 * m + 1)])));
  return A;
}

void check_discrete(const S4DDiscrete& s, const char* who) {
  const size_t n = static_cast<size_t>(s.channels * s.modes);
  if (s.channels < 1 || s.modes < 1 || s.dA.size() != n || s.dB.size() != n || s.C.size() != n)
    throw Error(std::string(who) + ": parameters must hold channels x modes = " + std::to_string(n) +
                " entries each, found dA " + std::to_string(s.dA.size()) + ", dB " + std::to_string(s.dB.size()) +
                ", C " + std::to_string(s.C.size()));
}

}  // namespace

std::vector<std::complex<double>> s4d_init_A(int64_t N, S4DInit init) {
  if (N < 2 || N % 2 != 0) throw Error("s4d_init_A: state size must be even and >= 2, found " + std::to_string(N));
  if (init == S4DInit::legs) return legs_diagonal(N);
  std::vector<std::complex<double>> A;
  const double pi = std::numbers::pi;
  for (int64_t m = 0; m < N / 2; ++m) {
    const double im = init == S4DInit::lin ? pi * static_cast<double>(m)
                                           : static_cast<double>(N) / pi * (static_cast<double>(N) / (2.0 * m + 1) - 1);
    A.emplace_back(-0.5, im);
  }
  return A;
}

S4DDiscrete s4d_discretize_zoh(const S4DParams& p) {
  const size_t n = static_cast<size_t>(p.channels * p.modes);
  if (p.channels < 1 || p.modes < 1 || p.A.size() != n || p.B.size() != n || p.C.size() != n ||
      p.dt.size() != static_cast<size_t>(p.channels))
    throw Error("s4d_discretize_zoh: A, B, C must hold channels x modes = " + std::to_string(n) +
                " entries and dt one per channel");
  S4DDiscrete s{p.channels, p.modes, {}, {}, {}};
  for (int64_t h = 0; h < p.channels; ++h) {
    const double dt = p.dt[static_cast<size_t>(h)];
    if (!(dt > 0)) throw Error("s4d_discretize_zoh: dt must be > 0, found " + std::to_string(dt) + " at channel " + std::to_string(h));
    for (int64_t m = 0; m < p.modes; ++m) {
      const size_t i = static_cast<size_t>(h * p.modes + m);
      if (p.A[i] == 0.0) throw Error("s4d_discretize_zoh: A must be non-zero (channel " + std::to_string(h) + ")");
      const std::complex<double> dA = std::exp(dt * p.A[i]);
      s.dA.emplace_back(dA);
      s.dB.emplace_back((dA - 1.0) / p.A[i] * p.B[i]);
      s.C.emplace_back(p.C[i]);
    }
  }
  return s;
}

// K[l] is the response of the recurrence to an impulse, so the vectorised scan computes it:
// from the state dB dA^(l0 - 1) and zero input, step i of a scan yields K[l0 + i]. The
// state is re-anchored from double precision every kAnchor steps, so f32 rounding never
// compounds over more than kAnchor multiplications (error ~kAnchor * 6e-8 relative).
void s4d_kernel(const S4DDiscrete& s, int64_t L, float* K) {
  check_discrete(s, "s4d_kernel");
  if (L < 1) throw Error("s4d_kernel: length must be >= 1, found " + std::to_string(L));
  constexpr int64_t kAnchor = 64, kChannels = 16;
  const int64_t H = s.channels, M = s.modes;
  // One task per block of channels, each walking all of L (the scan inside runs inline).
  parallel_for((H + kChannels - 1) / kChannels, 1, [&](int64_t b0, int64_t b1) {
    S4DDiscrete part;
    std::vector<std::complex<double>> anchor, stride;
    std::vector<float> state, zeros(static_cast<size_t>(kAnchor * kChannels), 0.f), out(zeros.size());
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t c0 = blk * kChannels, w = std::min(kChannels, H - c0);
      const auto first = static_cast<std::ptrdiff_t>(c0 * M), last = static_cast<std::ptrdiff_t>((c0 + w) * M);
      part = S4DDiscrete{w, M, {s.dA.begin() + first, s.dA.begin() + last}, {s.dB.begin() + first, s.dB.begin() + last},
                         {s.C.begin() + first, s.C.begin() + last}};
      anchor.assign(static_cast<size_t>(w * M), 0.0);
      stride.assign(static_cast<size_t>(w * M), 1.0);
      state.assign(static_cast<size_t>(2 * w * M), 0.f);
      for (size_t i = 0; i < anchor.size(); ++i) {
        const std::complex<double> z(part.dA[i]);
        anchor[i] = std::complex<double>(part.dB[i]) / z;
        for (int64_t k = 0; k < kAnchor; ++k) stride[i] *= z;
      }
      for (int64_t l0 = 0; l0 < L; l0 += kAnchor) {
        for (size_t i = 0; i < anchor.size(); ++i) {
          state[2 * i] = static_cast<float>(anchor[i].real());
          state[2 * i + 1] = static_cast<float>(anchor[i].imag());
          anchor[i] *= stride[i];
        }
        const int64_t n = std::min(kAnchor, L - l0);
        HWY_DYNAMIC_DISPATCH(Scan)(part, 1, n, zeros.data(), nullptr, state.data(), out.data());
        for (int64_t i = 0; i < n; ++i)
          for (int64_t h = 0; h < w; ++h) K[(c0 + h) * L + l0 + i] = out[static_cast<size_t>(i * w + h)];
      }
    }
  });
}

void s4d_scan(const S4DDiscrete& s, int64_t batch, int64_t seqlen, const float* u, const float* D, float* state,
              float* y) {
  check_discrete(s, "s4d_scan");
  if (batch < 1 || seqlen < 1) return;
  HWY_DYNAMIC_DISPATCH(Scan)(s, batch, seqlen, u, D, state, y);
}

void s4d_conv(const S4DDiscrete& s, int64_t batch, int64_t seqlen, const float* u, const float* D, float* y,
              LongConvMethod method) {
  check_discrete(s, "s4d_conv");
  if (batch < 1 || seqlen < 1) return;
  const int64_t H = s.channels;
  std::vector<float> K(static_cast<size_t>(H * seqlen));
  s4d_kernel(s, seqlen, K.data());
  const bool fft = method == LongConvMethod::fft || (method == LongConvMethod::automatic && long_conv_uses_fft(seqlen, seqlen));
  if (fft) causal_long_conv_fft(batch, seqlen, H, u, K.data(), seqlen, y);
  else causal_long_conv_direct(batch, seqlen, H, u, K.data(), seqlen, y);
  if (!D) return;
  parallel_for(batch * seqlen, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t h = 0; h < H; ++h) y[r * H + h] += D[h] * u[r * H + h];
  });
}

}  // namespace subq::ops
#endif  // HWY_ONCE
