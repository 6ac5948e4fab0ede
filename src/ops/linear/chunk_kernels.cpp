// Highway kernels behind chunk_kernels.h. The GEMM is a register-blocked outer-product
// loop (4 rows of C x 4 or 2 vectors of columns), vectorised over N: chunk products are small
// (chunk x head_dim), so packing into a panel format would cost more than it saves.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/linear/chunk_kernels.cpp"
#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"
#include "src/ops/linear/chunk_kernels.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// C[m0 .. m0+MR, n0 .. n0+NV*lanes) over k in [0, kend).
template <int MR, int NV, class D>
HWY_INLINE void GemmBlock(D d, int64_t kend, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                          int64_t ldc, bool accumulate) {
  const size_t NL = hn::Lanes(d);
  using V = hn::Vec<D>;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = accumulate ? hn::LoadU(d, C + r * ldc + v * NL) : hn::Zero(d);
  for (int64_t k = 0; k < kend; ++k) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = hn::LoadU(d, B + k * ldb + v * NL);
    for (int r = 0; r < MR; ++r) {
      const V a = hn::Set(d, A[r * lda + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] = hn::MulAdd(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) hn::StoreU(acc[r][v], d, C + r * ldc + v * NL);
}

// 4 x 4 vectors of accumulators where there are 32 vector registers (AVX-512): 8 loads
// (4 of B, 4 broadcasts of A) feed 16 FMAs. With 16 registers, 4 x 2.
constexpr int kWideBlock = HWY_MAX_BYTES >= 64 ? 4 : 2;

template <int MR, class D>
HWY_INLINE void GemmRows(D d, int64_t N, int64_t kend, const float* A, int64_t lda, const float* B, int64_t ldb,
                         float* C, int64_t ldc, bool accumulate) {
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  int64_t n = 0;
  for (; n + kWideBlock * NL <= N; n += kWideBlock * NL)
    GemmBlock<MR, kWideBlock>(d, kend, A, lda, B + n, ldb, C + n, ldc, accumulate);
  for (; n + 2 * NL <= N; n += 2 * NL) GemmBlock<MR, 2>(d, kend, A, lda, B + n, ldb, C + n, ldc, accumulate);
  for (; n < N; n += NL) GemmBlock<MR, 1>(d, kend, A, lda, B + n, ldb, C + n, ldc, accumulate);
}

// Rows of C in blocks of four; lower_a: row m reads only k <= m; lower_c: row m needs
// only columns n <= m (computed up to the end of the vector holding the diagonal).
void GemmLower(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
               int64_t ldc, bool accumulate, bool lower_a, bool lower_c) {
  const hn::ScalableTag<float> d;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t m = 0; m < M; m += 4) {
    const int64_t mr = std::min<int64_t>(4, M - m);
    const int64_t kend = lower_a ? std::min(K, m + mr) : K;
    const int64_t n = lower_c ? std::min(N, (m + mr + NL - 1) / NL * NL) : N;
    const float* a = A + m * lda;
    float* c = C + m * ldc;
    switch (mr) {
      case 4: GemmRows<4>(d, n, kend, a, lda, B, ldb, c, ldc, accumulate); break;
      case 3: GemmRows<3>(d, n, kend, a, lda, B, ldb, c, ldc, accumulate); break;
      case 2: GemmRows<2>(d, n, kend, a, lda, B, ldb, c, ldc, accumulate); break;
      default: GemmRows<1>(d, n, kend, a, lda, B, ldb, c, ldc, accumulate); break;
    }
  }
}

void ChunkGemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
               int64_t ldc, bool accumulate, bool lower_triangular) {
  GemmLower(M, N, K, A, lda, B, ldb, C, ldc, accumulate, lower_triangular, false);
}

void ChunkGemmCausal(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float* C, int64_t ldc) {
  GemmLower(M, N, K, A, lda, B, ldb, C, ldc, false, false, true);
}

// Runs f over full vectors, then the tail through a one-lane tag (same math for all).
template <class F>
HWY_INLINE void ForEachVector(int64_t n, F f) {
  const hn::ScalableTag<float> d;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + NL <= n; i += NL) f(d, i);
  const hn::CappedTag<float, 1> d1;
  for (; i < n; ++i) f(d1, i);
}

void MulExpDiff(const float* x, const float* a, const float* b, float* out, int64_t n) {
  ForEachVector(n, [&](auto d, int64_t i) {
    const auto e = hn::Exp(d, hn::Sub(hn::LoadU(d, a + i), hn::LoadU(d, b + i)));
    hn::StoreU(hn::Mul(hn::LoadU(d, x + i), e), d, out + i);
  });
}

void MulExpDiffScalar(const float* x, float c, const float* b, float* out, int64_t n) {
  ForEachVector(n, [&](auto d, int64_t i) {
    const auto e = hn::Exp(d, hn::Sub(hn::Set(d, c), hn::LoadU(d, b + i)));
    hn::StoreU(hn::Mul(hn::LoadU(d, x + i), e), d, out + i);
  });
}

void DecayedDotsBackward(const float* q, const float* K, const float* A, int64_t n, int64_t s, int64_t i, float* out,
                         float* e) {
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  std::fill(e, e + n, 1.f);
  for (int64_t j = i; j >= s; --j) {
    const float* k = K + j * n;
    const float* a = A + j * n;
    const bool advance = j > s;
    auto acc = hn::Zero(d);
    int64_t c = 0;
    for (; c + NL <= n; c += NL) {
      const auto ev = hn::LoadU(d, e + c);
      acc = hn::MulAdd(hn::Mul(hn::LoadU(d, q + c), hn::LoadU(d, k + c)), ev, acc);
      if (advance) hn::StoreU(hn::Mul(ev, hn::LoadU(d, a + c)), d, e + c);
    }
    float sum = hn::GetLane(hn::SumOfLanes(d, acc));
    for (; c < n; ++c) {
      const auto ev = hn::LoadU(d1, e + c);
      sum += hn::GetLane(hn::Mul(hn::Mul(hn::LoadU(d1, q + c), hn::LoadU(d1, k + c)), ev));
      if (advance) hn::StoreU(hn::Mul(ev, hn::LoadU(d1, a + c)), d1, e + c);
    }
    out[j] = sum;
  }
}

// The recurrent steps below walk S [dk, N] in column blocks of NV vectors, so each row's
// broadcast scalars serve NV vectors (4 where there are 32 vector registers, 2 with 16),
// and reduce over rows with two accumulator sets (even and odd rows), which halves the
// FMA latency chains that otherwise bound a step.
constexpr int kStepVectors = HWY_MAX_BYTES >= 64 ? 4 : 2;

// acc[c] = sum over rows r of what row(r, acc) adds, with rows alternating between acc
// and a second set.
template <int NV, class D, class F>
HWY_INLINE void AlternateRows(D d, int64_t dk, hn::Vec<D>* acc, F row) {
  hn::Vec<D> odd[NV];
  for (int c = 0; c < NV; ++c) acc[c] = odd[c] = hn::Zero(d);
  int64_t r = 0;
  for (; r + 2 <= dk; r += 2) {
    row(r, acc);
    row(r + 1, odd);
  }
  if (r < dk) row(r, acc);
  for (int c = 0; c < NV; ++c) acc[c] = hn::Add(acc[c], odd[c]);
}

// u[c] = (S^T x) over the block's columns.
template <int NV, class D>
HWY_INLINE void ColumnDots(D d, const float* S, int64_t dk, int64_t N, const float* x, hn::Vec<D>* u) {
  const size_t NL = hn::Lanes(d);
  AlternateRows<NV>(d, dk, u, [&](int64_t r, hn::Vec<D>* sum) {
    const auto xr = hn::Set(d, x[r]);
    for (int c = 0; c < NV; ++c) sum[c] = hn::MulAdd(xr, hn::LoadU(d, S + r * N + c * NL), sum[c]);
  });
}

// Runs step<NV>(d, S + n, v + n, o + n) over the column blocks of S [dk, N].
template <class Step>
HWY_INLINE void ForEachColumnBlock(int64_t N, const float* v, float* S, float* o, Step step) {
  const hn::ScalableTag<float> d;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  int64_t n = 0;
  for (; n + kStepVectors * NL <= N; n += kStepVectors * NL)
    step(std::integral_constant<int, kStepVectors>(), d, S + n, v + n, o + n);
  for (; n < N; n += NL) step(std::integral_constant<int, 1>(), d, S + n, v + n, o + n);
}

void LinearAttentionStep(float* S, int64_t dk, int64_t N, const float* decay, const float* k, const float* v,
                         const float* q, float* o) {
  ForEachColumnBlock(N, v, S, o, [&](auto nv, auto d, float* Sb, const float* vb, float* ob) {
    constexpr int NV = decltype(nv)::value;
    using V = hn::Vec<decltype(d)>;
    const size_t NL = hn::Lanes(d);
    V vv[NV], acc[NV];
    for (int c = 0; c < NV; ++c) vv[c] = hn::LoadU(d, vb + c * NL);
    AlternateRows<NV>(d, dk, acc, [&](int64_t r, V* sum) {
      const V dr = hn::Set(d, decay[r]), kr = hn::Set(d, k[r]), qr = hn::Set(d, q[r]);
      for (int c = 0; c < NV; ++c) {
        float* s = Sb + r * N + c * NL;
        const V updated = hn::MulAdd(dr, hn::LoadU(d, s), hn::Mul(kr, vv[c]));
        hn::StoreU(updated, d, s);
        sum[c] = hn::MulAdd(qr, updated, sum[c]);
      }
    });
    for (int c = 0; c < NV; ++c) hn::StoreU(acc[c], d, ob + c * NL);
  });
}

// The block kernels below unroll their loops over a block's tokens in full (#pragma GCC
// unroll): their arrays of vectors are indexed by token, and where GCC left such a loop
// rolled it kept the whole array on the stack (up to 91 vector slots in one kernel).
void LinearAttentionBlockFactors(const float* decay, const float* const* q, float q_scale, const float* const* k,
                                 int64_t dk, float* D, float* kd, float* qd, float* scores) {
  constexpr int M = kBlockTokens;
  // The columns [c, c + lanes) of every factor; the scores' partial sums go to acc.
  auto columns = [&](auto d, int64_t c, auto (&acc)[M][M]) {
    using V = hn::Vec<decltype(d)>;
    V dec[M], qv[M], kv[M];
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i) {
      dec[i] = hn::LoadU(d, decay + i * dk + c);
      qv[i] = hn::Mul(hn::Set(d, q_scale), hn::LoadU(d, q[i] + c));
      kv[i] = hn::LoadU(d, k[i] + c);
    }
    V prefix = dec[0];
#pragma GCC unroll 4
    for (int j = 0; j < M; ++j) {
      if (j > 0) prefix = hn::Mul(prefix, dec[j]);
      hn::StoreU(hn::Mul(qv[j], prefix), d, qd + j * dk + c);
    }
    hn::StoreU(prefix, d, D + c);
    V suffix = hn::Set(d, 1.f);
#pragma GCC unroll 4
    for (int i = M - 1; i >= 0; --i) {
      hn::StoreU(hn::Mul(kv[i], suffix), d, kd + i * dk + c);
      suffix = hn::Mul(suffix, dec[i]);
    }
#pragma GCC unroll 4
    for (int j = 0; j < M; ++j) {
      V qe = qv[j];
#pragma GCC unroll 4
      for (int i = j; i >= 0; --i) {
        acc[j][i] = hn::MulAdd(qe, kv[i], acc[j][i]);
        if (i > 0) qe = hn::Mul(qe, dec[i]);
      }
    }
  };
  const hn::ScalableTag<float> d;
  const hn::CappedTag<float, 1> d1;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  hn::Vec<decltype(d)> acc[M][M];
  hn::Vec<decltype(d1)> tail[M][M];
#pragma GCC unroll 4
  for (int j = 0; j < M; ++j)
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i) {
      acc[j][i] = hn::Zero(d);
      tail[j][i] = hn::Zero(d1);
    }
  int64_t c = 0;
  for (; c + NL <= dk; c += NL) columns(d, c, acc);
  for (; c < dk; ++c) columns(d1, c, tail);
#pragma GCC unroll 4
  for (int j = 0; j < M; ++j)
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i)
      scores[j * M + i] = i <= j ? hn::GetLane(hn::SumOfLanes(d, acc[j][i])) + hn::GetLane(tail[j][i]) : 0.f;
}

// The block steps' column runs: kBlockWide vectors of columns at a time (kBlockTokens
// outputs and value rows per column vector: two vectors fit 32 registers, one fits 16),
// single vectors for the rest.
constexpr int kBlockWide = kStepVectors / 2;

HWY_INLINE int64_t BlockColumnRuns(int64_t N) {
  const int64_t width = kBlockWide * static_cast<int64_t>(hn::Lanes(hn::ScalableTag<float>()));
  return (N + width - 1) / width;
}

template <class Run>
HWY_INLINE void ForEachBlockColumnRun(int64_t N, Run run) {
  const int64_t NL = static_cast<int64_t>(hn::Lanes(hn::ScalableTag<float>()));
  int64_t n = 0;
  for (; n + kBlockWide * NL <= N; n += kBlockWide * NL) run(std::integral_constant<int, kBlockWide>(), n);
  for (; n < N; n += NL) run(std::integral_constant<int, 1>(), n);
}

void LinearAttentionBlockStep(float* S, int64_t dk, int64_t N, const float* D, const float* kd, const float* qd,
                              const float* scores, const float* const* v, float* const* o, RowPrefetch& ahead) {
  constexpr int M = kBlockTokens;
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  const int64_t places = 2 * BlockColumnRuns(N);
  ForEachBlockColumnRun(N, [&](auto nv, int64_t n) {
    constexpr int NV = decltype(nv)::value;
    ahead.issue_share(places);
    V vv[M][NV], acc[M][NV];
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i)
      for (int c = 0; c < NV; ++c) {
        vv[i][c] = hn::LoadU(d, v[i] + n + c * NL);
        acc[i][c] = hn::Zero(d);
      }
    for (int64_t r = 0; r < dk; ++r) {
      float* s = S + r * N + n;
      V old[NV], upd[NV];
      for (int c = 0; c < NV; ++c) old[c] = hn::LoadU(d, s + c * NL);
#pragma GCC unroll 4
      for (int j = 0; j < M; ++j) {
        const V qj = hn::Set(d, qd[j * dk + r]);
        for (int c = 0; c < NV; ++c) acc[j][c] = hn::MulAdd(qj, old[c], acc[j][c]);
      }
      const V k0 = hn::Set(d, kd[r]);
      for (int c = 0; c < NV; ++c) upd[c] = hn::Mul(k0, vv[0][c]);
#pragma GCC unroll 4
      for (int i = 1; i < M; ++i) {
        const V ki = hn::Set(d, kd[i * dk + r]);
        for (int c = 0; c < NV; ++c) upd[c] = hn::MulAdd(ki, vv[i][c], upd[c]);
      }
      const V dr = hn::Set(d, D[r]);
      for (int c = 0; c < NV; ++c) hn::StoreU(hn::MulAdd(dr, old[c], upd[c]), d, s + c * NL);
    }
    ahead.issue_share(places);
#pragma GCC unroll 4
    for (int j = 0; j < M; ++j)
#pragma GCC unroll 4
      for (int i = 0; i <= j; ++i) {
        const V a = hn::Set(d, scores[j * M + i]);
        for (int c = 0; c < NV; ++c) acc[j][c] = hn::MulAdd(a, vv[i][c], acc[j][c]);
      }
#pragma GCC unroll 4
    for (int j = 0; j < M; ++j)
      for (int c = 0; c < NV; ++c) hn::StoreU(acc[j][c], d, o[j] + n + c * NL);
  });
}

void DeltaRuleStep(float* S, int64_t dk, int64_t N, float a, float beta, const float* k, const float* v,
                   const float* q, float* o) {
  // u = S^T k, delta = beta (v - a u); S = a S + k delta^T; o = S^T q.
  ForEachColumnBlock(N, v, S, o, [&](auto nv, auto d, float* Sb, const float* vb, float* ob) {
    constexpr int NV = decltype(nv)::value;
    using V = hn::Vec<decltype(d)>;
    const size_t NL = hn::Lanes(d);
    const V va = hn::Set(d, a), vbeta = hn::Set(d, beta);
    V delta[NV], acc[NV];
    ColumnDots<NV>(d, Sb, dk, N, k, delta);
    for (int c = 0; c < NV; ++c) delta[c] = hn::Mul(vbeta, hn::NegMulAdd(va, delta[c], hn::LoadU(d, vb + c * NL)));
    AlternateRows<NV>(d, dk, acc, [&](int64_t r, V* sum) {
      const V kr = hn::Set(d, k[r]), qr = hn::Set(d, q[r]);
      for (int c = 0; c < NV; ++c) {
        float* s = Sb + r * N + c * NL;
        const V updated = hn::MulAdd(va, hn::LoadU(d, s), hn::Mul(kr, delta[c]));
        hn::StoreU(updated, d, s);
        sum[c] = hn::MulAdd(qr, updated, sum[c]);
      }
    });
    for (int c = 0; c < NV; ++c) hn::StoreU(acc[c], d, ob + c * NL);
  });
}

// x[j] = S^T a_j and y[j] = S^T b_j over one column run of S (from S + n), for the
// kBlockTokens rows a_j, b_j (ld apart): the first pass of the two-pass block steps.
template <int NV, class D>
HWY_INLINE void ProjectBlock(D d, const float* S, int64_t dk, int64_t N, const float* a, const float* b, int64_t ld,
                             hn::Vec<D> (&x)[kBlockTokens][NV], hn::Vec<D> (&y)[kBlockTokens][NV]) {
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  for (int j = 0; j < kBlockTokens; ++j)
    for (int c = 0; c < NV; ++c) x[j][c] = y[j][c] = hn::Zero(d);
  for (int64_t r = 0; r < dk; ++r) {
    hn::Vec<D> sv[NV];
    for (int c = 0; c < NV; ++c) sv[c] = hn::LoadU(d, S + r * N + c * NL);
    for (int j = 0; j < kBlockTokens; ++j) {
      const auto aj = hn::Set(d, a[j * ld + r]), bj = hn::Set(d, b[j * ld + r]);
      for (int c = 0; c < NV; ++c) {
        x[j][c] = hn::MulAdd(aj, sv[c], x[j][c]);
        y[j][c] = hn::MulAdd(bj, sv[c], y[j][c]);
      }
    }
  }
}

void DeltaBlockStep(float* S, int64_t dk, int64_t N, const float* k, const float* q, int64_t ld_rows,
                    const float* kd, float D, const float* cp, const float* cu, const float* co, const float* beta,
                    const float* const* v, float* const* o, RowPrefetch& ahead) {
  constexpr int M = kBlockTokens;
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  const int64_t places = 3 * BlockColumnRuns(N);
  ForEachBlockColumnRun(N, [&](auto nv, int64_t n) {
    constexpr int NV = decltype(nv)::value;
    ahead.issue_share(places);
    // dd[j]: S^T k_j, then d_j; out[j]: S^T q_j, then o_j.
    V dd[M][NV], out[M][NV];
    ProjectBlock<NV>(d, S + n, dk, N, k, q, ld_rows, dd, out);
    ahead.issue_share(places);
#pragma GCC unroll 4
    for (int j = 0; j < M; ++j) {
      const V pj = hn::Set(d, cp[j]), bj = hn::Set(d, beta[j]);
      for (int c = 0; c < NV; ++c) {
        V u = hn::Mul(pj, dd[j][c]);
#pragma GCC unroll 4
        for (int i = 0; i < j; ++i) u = hn::MulAdd(hn::Set(d, cu[j * M + i]), dd[i][c], u);
        dd[j][c] = hn::Mul(bj, hn::Sub(hn::LoadU(d, v[j] + n + c * NL), u));
        V oj = hn::Mul(pj, out[j][c]);
#pragma GCC unroll 4
        for (int i = 0; i <= j; ++i) oj = hn::MulAdd(hn::Set(d, co[j * M + i]), dd[i][c], oj);
        hn::StoreU(oj, d, o[j] + n + c * NL);
      }
    }
    const V dv = hn::Set(d, D);
    for (int64_t r = 0; r < dk; ++r) {
      float* s = S + r * N + n;
      V upd[NV];
      for (int c = 0; c < NV; ++c) upd[c] = hn::Mul(dv, hn::LoadU(d, s + c * NL));
#pragma GCC unroll 4
      for (int i = 0; i < M; ++i) {
        const V ki = hn::Set(d, kd[i * ld_rows + r]);
        for (int c = 0; c < NV; ++c) upd[c] = hn::MulAdd(ki, dd[i][c], upd[c]);
      }
      for (int c = 0; c < NV; ++c) hn::StoreU(upd[c], d, s + c * NL);
    }
    ahead.issue_share(places);
  });
}

void DplrStep(float* S, int64_t dk, int64_t N, const float* w, const float* a, const float* b, const float* k,
              const float* v, const float* q, float* o) {
  // u = S^T a; S = diag(w) S + b u^T + k v^T; o = S^T q.
  ForEachColumnBlock(N, v, S, o, [&](auto nv, auto d, float* Sb, const float* vb, float* ob) {
    constexpr int NV = decltype(nv)::value;
    using V = hn::Vec<decltype(d)>;
    const size_t NL = hn::Lanes(d);
    V u[NV], vv[NV], acc[NV];
    ColumnDots<NV>(d, Sb, dk, N, a, u);
    for (int c = 0; c < NV; ++c) vv[c] = hn::LoadU(d, vb + c * NL);
    AlternateRows<NV>(d, dk, acc, [&](int64_t r, V* sum) {
      const V wr = hn::Set(d, w[r]), br = hn::Set(d, b[r]), kr = hn::Set(d, k[r]), qr = hn::Set(d, q[r]);
      for (int c = 0; c < NV; ++c) {
        float* s = Sb + r * N + c * NL;
        const V updated = hn::MulAdd(wr, hn::LoadU(d, s), hn::MulAdd(br, u[c], hn::Mul(kr, vv[c])));
        hn::StoreU(updated, d, s);
        sum[c] = hn::MulAdd(qr, updated, sum[c]);
      }
    });
    for (int c = 0; c < NV; ++c) hn::StoreU(acc[c], d, ob + c * NL);
  });
}

bool DplrBlockPack(const float* const* q, float q_scale, const float* const* k, const float* const* a,
                   const float* const* b, const float* const* log_w, int64_t dk, int64_t ldf, float* Q, float* K,
                   float* A, float* Bk, float* W, float* D, float* ad, float* qd) {
  constexpr int M = kBlockTokens;
  const hn::ScalableTag<float> d;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  // Lanes of log_w not <= 0 (NaN included), or-ed over full vectors; the tails' verdict.
  auto bad = hn::Lt(hn::Zero(d), hn::Zero(d));
  bool tails_ok = true;
  // Row by row: the caller's rows of a head lie a whole token apart, so the same columns
  // of several rows share L1 sets and address bits below 4 KiB; read side by side they
  // measured slower. D holds the running decay product meanwhile.
  for (int j = 0; j < M; ++j) {
    // Row pointers in locals: read through the arrays, they were reloaded after every store.
    const float *qj_row = q[j], *kj_row = k[j], *aj_row = a[j], *bj_row = b[j], *lw_row = log_w[j];
    auto columns = [&](auto d, int64_t c, auto lw) {
      using V = hn::Vec<decltype(d)>;
      const int64_t at = j * ldf + c;
      const V w = hn::Exp(d, lw);
      const V qj = hn::Mul(hn::Set(d, q_scale), hn::LoadU(d, qj_row + c)), aj = hn::LoadU(d, aj_row + c);
      hn::StoreU(w, d, W + at);
      hn::StoreU(qj, d, Q + at);
      hn::StoreU(aj, d, A + at);
      hn::StoreU(hn::LoadU(d, kj_row + c), d, K + at);
      hn::StoreU(hn::LoadU(d, bj_row + c), d, Bk + at);
      V prefix = j == 0 ? hn::Set(d, 1.f) : hn::LoadU(d, D + c);
      hn::StoreU(hn::Mul(prefix, aj), d, ad + at);
      prefix = hn::Mul(prefix, w);
      hn::StoreU(prefix, d, D + c);
      hn::StoreU(hn::Mul(prefix, qj), d, qd + at);
    };
    int64_t c = 0;
    for (; c + NL <= dk; c += NL) {
      const auto lw = hn::LoadU(d, lw_row + c);
      bad = hn::Or(bad, hn::Not(hn::Le(lw, hn::Zero(d))));
      columns(d, c, lw);
    }
    for (; c < dk; ++c) {
      const hn::CappedTag<float, 1> d1;
      const auto lw = hn::LoadU(d1, lw_row + c);
      tails_ok &= hn::AllTrue(d1, hn::Le(lw, hn::Zero(d1)));
      columns(d1, c, lw);
    }
  }
  return tails_ok && hn::AllFalse(d, bad);
}

// sums[p] = the sum of acc[p]'s lanes for 16 vectors: pairs interleaved within 128-bit
// blocks, then the blocks added (a quarter of the shuffles of 16 separate lane sums).
template <class D>
HWY_INLINE void SumLanesOf16(D d, const hn::Vec<D> (&acc)[16], float* sums) {
#if HWY_TARGET == HWY_SCALAR
  (void)d;
  for (int p = 0; p < 16; ++p) sums[p] = hn::GetLane(acc[p]);
#else
  const hn::Repartition<double, D> d64;
  const hn::FixedTag<float, 4> d4;
  const size_t NL = hn::Lanes(d);
  HWY_ALIGN float blocks[kChunkAlign];
  for (int g = 0; g < 4; ++g) {
    const hn::Vec<D>* x = acc + 4 * g;
    const auto s01 = hn::BitCast(d64, hn::Add(hn::InterleaveLower(d, x[0], x[1]), hn::InterleaveUpper(d, x[0], x[1])));
    const auto s23 = hn::BitCast(d64, hn::Add(hn::InterleaveLower(d, x[2], x[3]), hn::InterleaveUpper(d, x[2], x[3])));
    hn::Store(hn::Add(hn::BitCast(d, hn::InterleaveLower(d64, s01, s23)),
                      hn::BitCast(d, hn::InterleaveUpper(d64, s01, s23))),
              d, blocks);
    auto sum = hn::Load(d4, blocks);
    for (size_t at = 4; at < NL; at += 4) sum = hn::Add(sum, hn::Load(d4, blocks + at));
    hn::StoreU(sum, d4, sums + 4 * g);
  }
#endif
}

void DplrBlockScores(const float* Q, const float* A, const float* K, const float* Bk, const float* W, int64_t ldf,
                     float* ab, float* ak, float* qb, float* qk, float* bd, float* kd) {
  constexpr int M = kBlockTokens;
  static_assert(M * M == 16, "SumLanesOf16 reduces one score kind pair of a block");
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  // One pass for the keys (qk, ak), one for b (qb, ab): 16 sums each. Sum p < 10 is
  // (j, i <= j) of q_j, the rest (j, i < j) of a_j, both in the order the loops meet them.
  for (const auto& [X, qx, ax, xd] : {std::tuple{K, qk, ak, kd}, std::tuple{Bk, qb, ab, bd}}) {
    V acc[16];
    for (V& x : acc) x = hn::Zero(d);
    for (int64_t c = 0; c < ldf; c += NL) {
      int qp = 0, ap = 10;
#pragma GCC unroll 4
      for (int j = 0; j < M; ++j) {
        const V qj = hn::LoadU(d, Q + j * ldf + c);
        // e: the decays of tokens i+1 .. j (a_{j+1}'s stop one token before its own).
        V e = hn::Set(d, 1.f);
#pragma GCC unroll 4
        for (int i = j; i >= 0; --i) {
          const V xi = hn::LoadU(d, X + i * ldf + c);
          const V xe = i == j ? xi : hn::Mul(xi, e);
          // The last token's decays from i + 1 are the block's rest, R_i: xd_i = R_i x_i.
          if (j == M - 1) hn::StoreU(xe, d, xd + i * ldf + c);
          acc[qp] = hn::MulAdd(qj, xe, acc[qp]);
          ++qp;
          if (j + 1 < M) {
            acc[ap] = hn::MulAdd(hn::LoadU(d, A + (j + 1) * ldf + c), xe, acc[ap]);
            ++ap;
          }
          if (i > 0) e = i == j ? hn::LoadU(d, W + i * ldf + c) : hn::Mul(e, hn::LoadU(d, W + i * ldf + c));
        }
      }
    }
    float sums[16];
    SumLanesOf16(d, acc, sums);
    int qp = 0, ap = 10;
    for (int j = 0; j < M; ++j)
      for (int i = j; i >= 0; --i) {
        qx[j * M + i] = sums[qp++];
        if (j + 1 < M) ax[(j + 1) * M + i] = sums[ap++];
      }
  }
}

void DplrBlockStep(float* S, int64_t dk, int64_t N, int64_t ldf, const float* D, const float* ad, const float* qd,
                   const float* bd, const float* kd, const float* ab, const float* ak, const float* qb, const float* qk,
                   const float* const* v, float* const* o, RowPrefetch& ahead) {
  constexpr int M = kBlockTokens;
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const int64_t NL = static_cast<int64_t>(hn::Lanes(d));
  const int64_t places = 3 * BlockColumnRuns(N);
  ForEachBlockColumnRun(N, [&](auto nv, int64_t n) {
    constexpr int NV = decltype(nv)::value;
    ahead.issue_share(places);
    // u[j]: S^T ad_j, then u_j; out[j]: S^T qd_j, then o_j.
    V u[M][NV], out[M][NV], vv[M][NV];
    ProjectBlock<NV>(d, S + n, dk, N, ad, qd, ldf, u, out);
    ahead.issue_share(places);
    for (int i = 0; i < M; ++i)
      for (int c = 0; c < NV; ++c) vv[i][c] = hn::LoadU(d, v[i] + n + c * NL);
#pragma GCC unroll 4
    for (int j = 0; j < M; ++j)
#pragma GCC unroll 4
      for (int i = 0; i < j; ++i) {
        const V sb = hn::Set(d, ab[j * M + i]), sk = hn::Set(d, ak[j * M + i]);
        for (int c = 0; c < NV; ++c) u[j][c] = hn::MulAdd(sk, vv[i][c], hn::MulAdd(sb, u[i][c], u[j][c]));
      }
#pragma GCC unroll 4
    for (int j = 0; j < M; ++j) {
#pragma GCC unroll 4
      for (int i = 0; i <= j; ++i) {
        const V sb = hn::Set(d, qb[j * M + i]), sk = hn::Set(d, qk[j * M + i]);
        for (int c = 0; c < NV; ++c) out[j][c] = hn::MulAdd(sk, vv[i][c], hn::MulAdd(sb, u[i][c], out[j][c]));
      }
      for (int c = 0; c < NV; ++c) hn::StoreU(out[j][c], d, o[j] + n + c * NL);
    }
    for (int64_t r = 0; r < dk; ++r) {
      float* s = S + r * N + n;
      V upd[NV];
      const V dr = hn::Set(d, D[r]);
      for (int c = 0; c < NV; ++c) upd[c] = hn::Mul(dr, hn::LoadU(d, s + c * NL));
      for (int i = 0; i < M; ++i) {
        const V bi = hn::Set(d, bd[i * ldf + r]), ki = hn::Set(d, kd[i * ldf + r]);
        for (int c = 0; c < NV; ++c) upd[c] = hn::MulAdd(ki, vv[i][c], hn::MulAdd(bi, u[i][c], upd[c]));
      }
      for (int c = 0; c < NV; ++c) hn::StoreU(upd[c], d, s + c * NL);
    }
    ahead.issue_share(places);
  });
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
namespace subq::ops {

HWY_EXPORT(ChunkGemm);
HWY_EXPORT(ChunkGemmCausal);
HWY_EXPORT(MulExpDiff);
HWY_EXPORT(MulExpDiffScalar);
HWY_EXPORT(DecayedDotsBackward);
HWY_EXPORT(LinearAttentionStep);
HWY_EXPORT(LinearAttentionBlockFactors);
HWY_EXPORT(LinearAttentionBlockStep);
HWY_EXPORT(DeltaRuleStep);
HWY_EXPORT(DeltaBlockStep);
HWY_EXPORT(DplrStep);
HWY_EXPORT(DplrDecayedDots);
HWY_EXPORT(DplrBlockPack);
HWY_EXPORT(DplrBlockScores);
HWY_EXPORT(DplrBlockStep);

void chunk_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                int64_t ldc, bool accumulate, bool lower_triangular) {
  HWY_DYNAMIC_DISPATCH(ChunkGemm)(M, N, K, A, lda, B, ldb, C, ldc, accumulate, lower_triangular);
}
void chunk_gemm_causal(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                       float* C, int64_t ldc) {
  HWY_DYNAMIC_DISPATCH(ChunkGemmCausal)(M, N, K, A, lda, B, ldb, C, ldc);
}
void mul_exp_diff(const float* x, const float* a, const float* b, float* out, int64_t n) {
  HWY_DYNAMIC_DISPATCH(MulExpDiff)(x, a, b, out, n);
}
void mul_exp_diff_scalar(const float* x, float c, const float* b, float* out, int64_t n) {
  HWY_DYNAMIC_DISPATCH(MulExpDiffScalar)(x, c, b, out, n);
}
void decayed_dots_backward(const float* q, const float* K, const float* A, int64_t n, int64_t s, int64_t i, float* out,
                           float* scratch) {
  HWY_DYNAMIC_DISPATCH(DecayedDotsBackward)(q, K, A, n, s, i, out, scratch);
}
void linear_attention_step(float* S, int64_t dk, int64_t N, const float* decay, const float* k, const float* v,
                           const float* q, float* o) {
  HWY_DYNAMIC_DISPATCH(LinearAttentionStep)(S, dk, N, decay, k, v, q, o);
}
void linear_attention_block_factors(const float* decay, const float* const* q, float q_scale, const float* const* k,
                                    int64_t dk, float* D, float* kd, float* qd, float* scores) {
  HWY_DYNAMIC_DISPATCH(LinearAttentionBlockFactors)(decay, q, q_scale, k, dk, D, kd, qd, scores);
}
void linear_attention_block_step(float* S, int64_t dk, int64_t N, const float* D, const float* kd, const float* qd,
                                 const float* scores, const float* const* v, float* const* o, RowPrefetch& ahead) {
  HWY_DYNAMIC_DISPATCH(LinearAttentionBlockStep)(S, dk, N, D, kd, qd, scores, v, o, ahead);
}
void delta_rule_step(float* S, int64_t dk, int64_t N, float a, float beta, const float* k, const float* v,
                     const float* q, float* o) {
  HWY_DYNAMIC_DISPATCH(DeltaRuleStep)(S, dk, N, a, beta, k, v, q, o);
}
void delta_block_step(float* S, int64_t dk, int64_t N, const float* k, const float* q, int64_t ld_rows,
                      const float* kd, float D, const float* cp, const float* cu, const float* co, const float* beta,
                      const float* const* v, float* const* o, RowPrefetch& ahead) {
  HWY_DYNAMIC_DISPATCH(DeltaBlockStep)(S, dk, N, k, q, ld_rows, kd, D, cp, cu, co, beta, v, o, ahead);
}
void dplr_step(float* S, int64_t dk, int64_t N, const float* w, const float* a, const float* b, const float* k,
               const float* v, const float* q, float* o) {
  HWY_DYNAMIC_DISPATCH(DplrStep)(S, dk, N, w, a, b, k, v, q, o);
}
void dplr_decayed_dots(const float* q, const float* a_next, const float* K, const float* Bk, const float* W, int64_t n,
                       int64_t s, int64_t i, float* qk, float* qb, float* ak, float* ab, float* e) {
  HWY_DYNAMIC_DISPATCH(DplrDecayedDots)(q, a_next, K, Bk, W, n, s, i, qk, qb, ak, ab, e);
}

bool dplr_block_pack(const float* const* q, float q_scale, const float* const* k, const float* const* a,
                     const float* const* b, const float* const* log_w, int64_t dk, int64_t ldf, float* Q, float* K,
                     float* A, float* Bk, float* W, float* D, float* ad, float* qd) {
  return HWY_DYNAMIC_DISPATCH(DplrBlockPack)(q, q_scale, k, a, b, log_w, dk, ldf, Q, K, A, Bk, W, D, ad, qd);
}
void dplr_block_scores(const float* Q, const float* A, const float* K, const float* Bk, const float* W, int64_t ldf,
                       float* ab, float* ak, float* qb, float* qk, float* bd, float* kd) {
  HWY_DYNAMIC_DISPATCH(DplrBlockScores)(Q, A, K, Bk, W, ldf, ab, ak, qb, qk, bd, kd);
}
void dplr_block_step(float* S, int64_t dk, int64_t N, int64_t ldf, const float* D, const float* ad, const float* qd,
                     const float* bd, const float* kd, const float* ab, const float* ak, const float* qb,
                     const float* qk, const float* const* v, float* const* o, RowPrefetch& ahead) {
  HWY_DYNAMIC_DISPATCH(DplrBlockStep)(S, dk, N, ldf, D, ad, qd, bd, kd, ab, ak, qb, qk, v, o, ahead);
}

}  // namespace subq::ops
#endif  // HWY_ONCE
