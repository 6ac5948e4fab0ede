// Chunked delta rule. Writing S_i = a_i S_{i-1} + k_i d_i^T with the per-token update
// d_i = beta_i (v_i - a_i S_{i-1}^T k_i), a chunk of L tokens starting from state S0
// with cumulative log-gates G_i gives
//   (I + A) D = R,  A_ij = beta_i exp(G_i - G_j) <k_i, k_j> (j < i),
//   R = diag(beta) (V - diag(exp G) K S0),
//   O = diag(exp G) Q S0 + (Q K^T masked, times exp(G_i - G_j)) D,
//   S_new = exp(G_L) S0 + (K * exp(G_L - G))^T D.
// (I + A)^{-1} is the UT transform of the WY representation; it is applied here by
// forward substitution on R (L^2 dv / 2 FMAs), which is cheaper on a CPU than forming
// it explicitly because chunks of one head run in order anyway. All exponents are <= 0.
#include "src/ops/delta/delta_rule.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/linear/chunk_kernels.h"
#include "src/ops/linear/head_layout.h"

namespace subq::ops {
namespace {

struct Problem {
  int64_t B, T, H, dk, dv, dvp;
  HeadRows q, k, v;
  HeadRowsOut o;
  TokenScalars beta, log_gate;
  bool gated;
  float* state;
  DeltaRuleOptions opt;
};

struct DeltaWorkspaceFloats;

// A thread's buffers for one call, zeroed.
struct Workspace {
  // The state being advanced: the caller's memory when its rows need no padding, else S.
  float* state = nullptr;
  Piece S, Q, Kr, Kt, KK, att, V, R, O, G, beta, coef;
  Workspace(const Problem& p, int64_t Lp)
      : memory_({{&S, p.dv != p.dvp ? p.dk * p.dvp : 0},
                 {&Q, Lp * p.dk},
                 {&Kr, Lp * p.dk},
                 {&Kt, p.dk * Lp},
                 {&KK, Lp * Lp},
                 {&att, Lp * Lp},
                 {&V, Lp * p.dvp},
                 {&R, Lp * p.dvp},
                 {&O, Lp * p.dvp},
                 {&G, Lp},
                 {&beta, Lp},
                 {&coef, Lp}}) {}

 private:
  ZeroedPieces<DeltaWorkspaceFloats> memory_;
};

// Normalised, scaled q and normalised k of one token.
void load_qk(const Problem& p, int64_t b, int64_t t, int64_t h, float* q, float* k) {
  const float* qs = p.q.at(b, t, h);
  const float* ks = p.k.at(b, t, h);
  float qn = p.opt.scale, kn = 1.f;
  if (p.opt.l2_normalize_qk) {
    double qq = 0, kk = 0;
    for (int64_t d = 0; d < p.dk; ++d) {
      qq += static_cast<double>(qs[d]) * qs[d];
      kk += static_cast<double>(ks[d]) * ks[d];
    }
    qn = static_cast<float>(p.opt.scale / std::sqrt(qq + p.opt.l2_eps));
    kn = static_cast<float>(1 / std::sqrt(kk + p.opt.l2_eps));
  }
  for (int64_t d = 0; d < p.dk; ++d) {
    q[d] = qs[d] * qn;
    k[d] = ks[d] * kn;
  }
}

void load_v(const Problem& p, const float* v, float* row) {
  std::copy_n(v, p.dv, row);
  std::fill(row + p.dv, row + p.dvp, 0.f);
}

float token_log_gate(const Problem& p, int64_t b, int64_t t, int64_t h) {
  return p.gated ? p.log_gate.at(b, t, h) : 0.f;
}

// Token by token, kBlockTokens at a time (delta_block_step: two passes over the state per
// block, 3 + 1/kBlockTokens operations per state element and token where the single step
// makes two passes and 4 per token), the last T % kBlockTokens one at a time. The
// block's decays are products of its tokens' gates, multiplied, never divided.
void run_recurrent(const Problem& p, Workspace& w, int64_t b, int64_t h) {
  constexpr int M = kBlockTokens;
  const int64_t dk = p.dk;
  float *q = w.Q.data(), *k = w.Kr.data(), *v = w.V.data(), *o = w.O.data();
  float* kd = w.Kt.data();
  // Rows of 1 make decayed_dots_backward plain dot products (none for a decode step).
  const bool blocks = p.T >= M;
  const std::vector<float> ones(blocks ? static_cast<size_t>(M * dk) : 0, 1.f);
  std::vector<float> scratch(blocks ? static_cast<size_t>(dk) : 0);
  float a[M], beta[M], cp[M], cu[M * M] = {}, co[M * M] = {}, dots[M];
  int64_t t = 0;
  for (; t + M <= p.T; t += M) {
    const float* vr[M];
    float* orow[M];
    RowPrefetch ahead;
    for (int i = 0; i < M; ++i) {
      load_qk(p, b, t + i, h, q + i * dk, k + i * dk);
      a[i] = std::exp(token_log_gate(p, b, t + i, h));
      beta[i] = p.beta.at(b, t + i, h);
      load_v(p, p.v.at(b, t + i, h), v + i * p.dvp);
      vr[i] = v + i * p.dvp;
      orow[i] = o + i * p.dvp;
      if (t + M + i < p.T) {
        ahead.add(p.q.at(b, t + M + i, h), dk);
        ahead.add(p.k.at(b, t + M + i, h), dk);
        ahead.add(p.v.at(b, t + M + i, h), p.dv);
      }
    }
    // decay(i, j) = a_{i+1} .. a_j (1 for i = j).
    auto decay = [&](int i, int j) {
      float x = 1.f;
      for (int l = i + 1; l <= j; ++l) x *= a[l];
      return x;
    };
    for (int j = 0; j < M; ++j) {
      cp[j] = decay(-1, j);
      decayed_dots_backward(q + j * dk, k, ones.data(), dk, 0, j, dots, scratch.data());
      for (int i = 0; i <= j; ++i) co[j * M + i] = decay(i, j) * dots[i];
      if (j > 0) {
        decayed_dots_backward(k + j * dk, k, ones.data(), dk, 0, j - 1, dots, scratch.data());
        for (int i = 0; i < j; ++i) cu[j * M + i] = decay(i, j) * dots[i];
      }
    }
    for (int i = 0; i < M; ++i) {
      const float f = decay(i, M - 1);
      for (int64_t d = 0; d < dk; ++d) kd[i * dk + d] = f * k[i * dk + d];
    }
    delta_block_step(w.state, dk, p.dvp, k, q, dk, kd, cp[M - 1], cp, cu, co, beta, vr, orow, ahead);
    for (int i = 0; i < M; ++i) std::copy_n(orow[i], p.dv, p.o.at(b, t + i, h));
  }
  for (; t < p.T; ++t) {
    load_qk(p, b, t, h, q, k);
    load_v(p, p.v.at(b, t, h), v);
    delta_rule_step(w.state, p.dk, p.dvp, std::exp(token_log_gate(p, b, t, h)), p.beta.at(b, t, h), k, v, q, o);
    std::copy_n(o, p.dv, p.o.at(b, t, h));
  }
}

void run_chunked(const Problem& p, Workspace& w, int64_t b, int64_t h, int64_t Lp) {
  const int64_t dk = p.dk, dvp = p.dvp, C = p.opt.chunk;
  for (int64_t t0 = 0; t0 < p.T; t0 += C) {
    const int64_t L = std::min(C, p.T - t0);
    for (int64_t i = 0; i < L; ++i) {
      const int64_t t = t0 + i;
      load_qk(p, b, t, h, w.Q.data() + i * dk, w.Kr.data() + i * dk);
      load_v(p, p.v.at(b, t, h), w.V.data() + i * dvp);
      w.beta[i] = p.beta.at(b, t, h);
      w.G[i] = token_log_gate(p, b, t, h) + (i > 0 ? w.G[i - 1] : 0.f);
    }
    transpose_rows(L, dk, Lp, [&](int64_t i) { return w.Kr.data() + i * dk; }, w.Kt.data());
    chunk_gemm_causal(L, Lp, dk, w.Kr.data(), dk, w.Kt.data(), Lp, w.KK.data(), Lp);
    chunk_gemm_causal(L, Lp, dk, w.Q.data(), dk, w.Kt.data(), Lp, w.att.data(), Lp);
    for (int64_t i = 0; i < L; ++i) {
      float* row = w.att.data() + i * Lp;
      // Whole vectors past the diagonal (overwritten below) rather than a scalar tail.
      if (p.gated) mul_exp_diff_scalar(row, w.G[i], w.G.data(), row, std::min(Lp, round_up_to_align(i + 1)));
      std::fill(row + i + 1, row + L, 0.f);
    }
    // R = diag(beta) (V - diag(exp G) K S0), then D = (I + A)^{-1} R in place.
    chunk_gemm(L, dvp, dk, w.Kr.data(), dk, w.state, dvp, w.R.data(), dvp, false);
    for (int64_t i = 0; i < L; ++i) {
      const float e = p.gated ? std::exp(w.G[i]) : 1.f;
      float* r = w.R.data() + i * dvp;
      const float* v = w.V.data() + i * dvp;
      for (int64_t c = 0; c < dvp; ++c) r[c] = w.beta[i] * (v[c] - e * r[c]);
    }
    for (int64_t i = 1; i < L; ++i) {
      const float* kk = w.KK.data() + i * Lp;
      if (p.gated) mul_exp_diff_scalar(kk, w.G[i], w.G.data(), w.coef.data(), i);
      else std::copy_n(kk, i, w.coef.data());
      for (int64_t j = 0; j < i; ++j) w.coef[j] *= -w.beta[i];
      chunk_gemm(1, dvp, i, w.coef.data(), Lp, w.R.data(), dvp, w.R.data() + i * dvp, dvp, true);
    }
    // Outputs: intra-chunk on D, inter-chunk on the carried state.
    chunk_gemm(L, dvp, L, w.att.data(), Lp, w.R.data(), dvp, w.O.data(), dvp, false, true);
    if (p.gated)
      for (int64_t i = 0; i < L; ++i) {
        const float e = std::exp(w.G[i]);
        for (int64_t d = 0; d < dk; ++d) w.Q[i * dk + d] *= e;
      }
    chunk_gemm(L, dvp, dk, w.Q.data(), dk, w.state, dvp, w.O.data(), dvp, true);
    for (int64_t i = 0; i < L; ++i) std::copy_n(w.O.data() + i * dvp, p.dv, p.o.at(b, t0 + i, h));
    // State to the end of the chunk.
    if (p.gated) {
      const float last = w.G[L - 1];
      const float decay = std::exp(last);
      for (int64_t i = 0; i < p.dk * p.dvp; ++i) w.state[i] *= decay;
      for (int64_t j = 0; j < L; ++j) {
        const float wj = std::exp(last - w.G[j]);
        float* row = w.R.data() + j * dvp;
        for (int64_t c = 0; c < dvp; ++c) row[c] *= wj;
      }
    }
    chunk_gemm(dk, dvp, L, w.Kt.data(), Lp, w.R.data(), dvp, w.state, dvp, true);
  }
}

}  // namespace

void delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& log_gate,
                const Tensor& state, const Tensor& o, const DeltaRuleOptions& options) {
  for (const auto* t : {&q, &k, &v, &o})
    if (!t->defined() || t->ndim() != 4) throw Error("delta_rule: q, k, v, o: expected 4-d tensors [B, T, heads, d]");
  if (options.chunk < 1 || options.chunk > 1024)
    throw Error("delta_rule: chunk: expected 1..1024, got " + std::to_string(options.chunk));
  Problem p{};
  p.opt = options;
  p.B = q.dim(0);
  p.T = q.dim(1);
  p.H = std::max({q.dim(2), k.dim(2), v.dim(2)});
  p.dk = q.dim(3);
  p.dv = v.dim(3);
  p.dvp = round_up_to_align(p.dv);
  if (p.T < 1) throw Error("delta_rule: q: expected T >= 1, got " + q.str());
  p.q = head_rows(q, "delta_rule: q", p.B, p.T, p.H, p.dk);
  p.k = head_rows(k, "delta_rule: k", p.B, p.T, p.H, p.dk);
  p.v = head_rows(v, "delta_rule: v", p.B, p.T, p.H, p.dv);
  p.o = head_rows_out(o, "delta_rule: o", p.B, p.T, p.H, p.dv);
  p.beta = token_scalars(beta, "delta_rule: beta", p.B, p.T, p.H);
  p.gated = log_gate.defined();
  if (p.gated) {
    p.log_gate = token_scalars(log_gate, "delta_rule: log_gate", p.B, p.T, p.H);
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t t = 0; t < p.T; ++t)
        for (int64_t h = 0; h < p.H; ++h)
          if (!(p.log_gate.at(b, t, h) <= 0.f))
            throw Error("delta_rule: log_gate: expected values <= 0, got " + std::to_string(p.log_gate.at(b, t, h)));
  }
  check_dtype(state, DType::f32, "delta_rule: state");
  check_shape(state, Shape{p.B, p.H, p.dk, p.dv}, "delta_rule: state");
  check_contiguous(state, "delta_rule: state");
  p.state = state.mutable_data<float>();

  const bool recurrent = options.algorithm != LinearAlgorithm::chunked;
  const int64_t Lp = round_up_to_align(std::min(options.chunk, p.T));
  parallel_for(p.B * p.H, 1, [&](int64_t begin, int64_t end) {
    Workspace w(p, recurrent ? std::min<int64_t>(p.T, kBlockTokens) : Lp);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / p.H, h = task % p.H;
      with_padded_state(p.state + task * p.dk * p.dv, p.dk, p.dv, p.dvp, w.S.data(), [&](float* state) {
        w.state = state;
        if (recurrent) run_recurrent(p, w, b, h);
        else run_chunked(p, w, b, h, Lp);
      });
    }
  });
}

}  // namespace subq::ops
