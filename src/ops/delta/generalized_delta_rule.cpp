// Chunked generalized delta rule. Unrolling S_i = diag(w_i) S_{i-1} + b_i u_i^T + k_i v_i^T
// with u_i = S_{i-1}^T a_i over a chunk of L tokens that starts from state S0, with
// cumulative log-decays G_i = sum_{m<=i} log w_m (vectors over dk, G_{-1} = 0), gives
//   S_i = diag(exp G_i) S0 + sum_{j<=i} diag(exp(G_i - G_j)) (k_j v_j^T + b_j u_j^T),
// so with <x, y>_{i,j} = sum_d x_d y_d exp(G_i,d - G_j,d) and rows i of U = u_i^T:
//   (I - M_ab) U = (A * exp G_{i-1}) S0 + M_ak V,   M_a*[i, j] = <a_i, *_j>_{i-1,j}, j < i
//   O = (Q * exp G_i) S0 + M_qk V + M_qb U,        M_q*[i, j] = <q_i, *_j>_{i,j},   j <= i
//   S_L = diag(exp G_L) S0 + (K * exp(G_L - G))^T V + (B * exp(G_L - G))^T U,
// where * is a row-wise product and * in M_a*, M_q* stands for k or b.
// The unit lower triangular system is solved by forward substitution (chunks of one head
// run in order anyway). As in the vector-gated linear attention, the decays of the M
// matrices do not factor into plain products without dividing by cumulative products,
// so the chunk is cut into 16-token blocks: block I against the tokens before it is a
// GEMM with both factors taken relative to the token just before block I, and inside the
// diagonal blocks the decays are running products of the per-token decays. Every
// exponent is <= 0.
#include "src/ops/delta/generalized_delta_rule.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/common/activations.h"
#include "src/ops/linear/chunk_kernels.h"
#include "src/ops/linear/head_layout.h"

namespace subq::ops {
namespace {

constexpr int64_t kSubBlock = kChunkAlign;

// Recurrent prefills of at least this many tokens check their log-decays as the blocks
// read them, advancing copies of the states that are written back only when every value
// passed (a bad value leaves the caller's states as they were). A separate pass over
// log_w first cost ~3% of a prefill (Zen 4, 32 heads of 64); the copies cost a state's
// read and write per call, too much for short calls, and the states' memory again.
constexpr int64_t kCheckInPassTokens = 256;

struct Problem {
  int64_t B, T, H, dk, dv, dkp, dvp;
  HeadRows q, k, v, a, b, log_w;
  HeadRowsOut o;
  float* state;
  GeneralizedDeltaRuleOptions opt;
};

struct DplrWorkspaceFloats;

// A thread's buffers for one call, zeroed (W: ones). Token rows of dk values are padded
// to dkp (zeros, decays of 1) so that the SIMD kernels need no tails.
struct Workspace {
  // The chunked form's state being advanced: the caller's memory when its rows need no
  // padding, else S.
  float* state = nullptr;
  Piece S, Q, K, A, Bk, W, G, Kt, Bt, Gt, Khat, Bhat, Qhat, Ahat, X, Mqk, Mqb, Mak, Mab, V, U, O, zeros, scratch;
  // The recurrence's block factors (dplr_block_step): ad, qd, bd, kd, then D; none when
  // T < kBlockTokens (no block runs).
  Piece factors;
  // The recurrence (a block of kBlockTokens rows) sizes only its own buffers.
  Workspace(const Problem& p, int64_t Lp, bool recurrent)
      : memory_({{&Q, Lp * p.dkp},
                 {&K, Lp * p.dkp},
                 {&A, Lp * p.dkp},
                 {&Bk, Lp * p.dkp},
                 {&W, Lp * p.dkp},
                 {&Mqk, Lp * Lp},
                 {&Mqb, Lp * Lp},
                 {&Mak, Lp * Lp},
                 {&Mab, Lp * Lp},
                 {&V, Lp * p.dvp},
                 {&O, Lp * p.dvp},
                 {&scratch, recurrent ? 0 : p.dkp},
                 {&factors, recurrent && Lp == kBlockTokens ? (4 * kBlockTokens + 1) * p.dkp : 0},
                 {&S, !recurrent && p.dv != p.dvp ? p.dk * p.dvp : 0},
                 {&G, recurrent ? 0 : Lp * p.dkp},
                 {&X, recurrent ? 0 : Lp * p.dkp},
                 {&Kt, recurrent ? 0 : p.dk * Lp},
                 {&Bt, recurrent ? 0 : p.dk * Lp},
                 {&Gt, recurrent ? 0 : p.dk * Lp},
                 {&Khat, recurrent ? 0 : p.dk * Lp},
                 {&Bhat, recurrent ? 0 : p.dk * Lp},
                 {&Qhat, recurrent ? 0 : kSubBlock * p.dkp},
                 {&Ahat, recurrent ? 0 : kSubBlock * p.dkp},
                 {&U, recurrent ? 0 : Lp * p.dvp},
                 {&zeros, recurrent ? 0 : p.dkp}}) {
    std::fill_n(W.data(), W.size, 1.f);
  }

 private:
  ZeroedPieces<DplrWorkspaceFloats> memory_;
};

void load_v(const Problem& p, int64_t b, int64_t t, int64_t h, float* row) {
  std::copy_n(p.v.at(b, t, h), p.dv, row);
  std::fill(row + p.dv, row + p.dvp, 0.f);
}

// Where token t of head (b, h) reads its value row and writes its output: in place where
// the rows need no padding, else through the workspace's padded rows i.
void block_value_rows(const Problem& p, Workspace& w, int64_t b, int64_t t, int64_t h, int i, const float** v,
                      float** o) {
  if (p.dv == p.dvp) {
    v[i] = p.v.at(b, t, h);
    o[i] = p.o.at(b, t, h);
    return;
  }
  load_v(p, b, t, h, w.V.data() + i * p.dvp);
  v[i] = w.V.data() + i * p.dvp;
  o[i] = w.O.data() + i * p.dvp;
}

// Asks for the rows of kBlockTokens tokens of task from token t (those before T).
void add_block_prefetch(const Problem& p, int64_t task, int64_t t, RowPrefetch& ahead) {
  if (t >= p.T) return;  // no row address past the inputs is formed
  const int64_t b = task / p.H, h = task % p.H, n = std::min<int64_t>(kBlockTokens, p.T - t);
  for (const HeadRows* rows : {&p.q, &p.k, &p.a, &p.b, &p.log_w}) {
    const float* row = rows->at(b, t, h);
    for (int64_t i = 0; i < n; ++i) ahead.add(row + i * rows->st, p.dk);
  }
  const float* row = p.v.at(b, t, h);
  for (int64_t i = 0; i < n; ++i) ahead.add(row + i * p.v.st, p.dv);
}

// kBlockTokens tokens of task (b, h) from token t (dplr_block_step): factors, scores by
// running products of the decays (multiplied, never divided), then the two passes.
// ahead: rows of the next work to bring in meanwhile. Returns whether the block's
// log-decays were all <= 0.
bool run_block(const Problem& p, Workspace& w, int64_t b, int64_t h, int64_t t, float* state, RowPrefetch& ahead) {
  constexpr int M = kBlockTokens;
  const int64_t dkp = p.dkp;
  const float *q[M], *k[M], *a[M], *bk[M], *log_w[M], *v[M];
  float* o[M];
  const float *q0 = p.q.at(b, t, h), *k0 = p.k.at(b, t, h), *a0 = p.a.at(b, t, h), *b0 = p.b.at(b, t, h),
              *log_w0 = p.log_w.at(b, t, h);
  for (int i = 0; i < M; ++i) {
    q[i] = q0 + i * p.q.st;
    k[i] = k0 + i * p.k.st;
    a[i] = a0 + i * p.a.st;
    bk[i] = b0 + i * p.b.st;
    log_w[i] = log_w0 + i * p.log_w.st;
    block_value_rows(p, w, b, t + i, h, i, v, o);
  }
  float* ad = w.factors.data();
  float* qd = ad + M * dkp;
  float* bd = qd + M * dkp;
  float* kd = bd + M * dkp;
  float* D = kd + M * dkp;
  const bool decays_ok = dplr_block_pack(q, p.opt.scale, k, a, bk, log_w, p.dk, dkp, w.Q.data(), w.K.data(),
                                         w.A.data(), w.Bk.data(), w.W.data(), D, ad, qd);
  float *qk = w.Mqk.data(), *qb = w.Mqb.data(), *ak = w.Mak.data(), *ab = w.Mab.data();
  dplr_block_scores(w.Q.data(), w.A.data(), w.K.data(), w.Bk.data(), w.W.data(), dkp, ab, ak, qb, qk, bd, kd);
  dplr_block_step(state, p.dk, p.dvp, dkp, D, ad, qd, bd, kd, ab, ak, qb, qk, v, o, ahead);
  if (p.dv != p.dvp)
    for (int i = 0; i < M; ++i) std::copy_n(o[i], p.dv, p.o.at(b, t + i, h));
  return decays_ok;
}

bool row_at_most_zero(const float* x, int64_t n) {
  int64_t bad = 0;
  for (int64_t d = 0; d < n; ++d) bad += !(x[d] <= 0.f);
  return bad == 0;
}

// Over a range of (batch, head) tasks, every head of a block of tokens (kBlockTokens at
// a time, the last T % kBlockTokens one by one) before the next, as ggml does token by
// token: the rows of one token are then adjacent in memory, where one head's rows lie H
// heads apart (measured 1.2x at RWKV-7 shapes); the range's states (16 KiB each at
// dk = dv = 64) stay in L2.
// copies: when given, the states to advance instead of the caller's (padded rows, one per
// task), and the log-decays are checked as they are read: a bad one sets bad_decay and
// stops the range, and other ranges stop at their next block.
void run_recurrent(const Problem& p, Workspace& w, int64_t begin, int64_t end, float* copies,
                   std::atomic<bool>& bad_decay) {
  constexpr int M = kBlockTokens;
  const int64_t size = p.dk * p.dvp;
  const bool padded = p.dv != p.dvp && !copies;
  std::vector<float> padded_states(padded ? static_cast<size_t>((end - begin) * size) : 0);
  auto state_of = [&](int64_t task) {
    if (copies) return copies + task * size;
    return padded ? &padded_states[static_cast<size_t>((task - begin) * size)] : p.state + task * size;
  };
  if (padded || copies)
    for (int64_t task = begin; task < end; ++task)
      pad_state_rows(p.state + task * p.dk * p.dv, p.dk, p.dv, p.dvp, state_of(task));
  const auto stop = [&](bool decays_ok) {
    if (!copies) return false;
    if (!decays_ok) bad_decay.store(true, std::memory_order_relaxed);
    return bad_decay.load(std::memory_order_relaxed);
  };
  int64_t t = 0;
  for (; t + M <= p.T; t += M)
    for (int64_t task = begin; task < end; ++task) {
      RowPrefetch ahead;
      const bool last = task + 1 == end;
      add_block_prefetch(p, last ? begin : task + 1, last ? t + M : t, ahead);
      if (stop(run_block(p, w, task / p.H, task % p.H, t, state_of(task), ahead))) return;
    }
  float *q = w.Q.data(), *decay = w.W.data(), *v = w.V.data(), *o = w.O.data();
  for (; t < p.T; ++t)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / p.H, h = task % p.H;
      const float* log_w = p.log_w.at(b, t, h);
      if (stop(!copies || row_at_most_zero(log_w, p.dk))) return;
      const float* qt = p.q.at(b, t, h);
      for (int64_t d = 0; d < p.dk; ++d) q[d] = qt[d] * p.opt.scale;
      ops::exp(log_w, decay, static_cast<size_t>(p.dk));
      load_v(p, b, t, h, v);
      dplr_step(state_of(task), p.dk, p.dvp, decay, p.a.at(b, t, h), p.b.at(b, t, h), p.k.at(b, t, h), v, q, o);
      std::copy_n(o, p.dv, p.o.at(b, t, h));
    }
  if (padded)
    for (int64_t task = begin; task < end; ++task)
      unpad_state_rows(state_of(task), p.dk, p.dv, p.dvp, p.state + task * p.dk * p.dv);
}

// Packs the chunk's rows (q scaled; decays and cumulative log-decays) and the transposed
// columns of k, b and G.
void pack_chunk(const Problem& p, Workspace& w, int64_t b, int64_t h, int64_t t0, int64_t L, int64_t Lp) {
  const int64_t dk = p.dk, dkp = p.dkp;
  for (int64_t i = 0; i < L; ++i) {
    const int64_t t = t0 + i;
    const float* qt = p.q.at(b, t, h);
    for (int64_t d = 0; d < dk; ++d) w.Q[i * dkp + d] = qt[d] * p.opt.scale;
    std::copy_n(p.k.at(b, t, h), dk, &w.K[i * dkp]);
    std::copy_n(p.a.at(b, t, h), dk, &w.A[i * dkp]);
    std::copy_n(p.b.at(b, t, h), dk, &w.Bk[i * dkp]);
    float* g = &w.G[i * dkp];
    const float* lw = p.log_w.at(b, t, h);
    ops::exp(lw, &w.W[i * dkp], static_cast<size_t>(dk));
    for (int64_t d = 0; d < dk; ++d) g[d] = lw[d] + (i > 0 ? g[d - dkp] : 0.f);
    load_v(p, b, t, h, &w.V[i * p.dvp]);
  }
  transpose_rows(L, dk, Lp, [&](int64_t i) { return &w.K[i * dkp]; }, w.Kt.data());
  transpose_rows(L, dk, Lp, [&](int64_t i) { return &w.Bk[i * dkp]; }, w.Bt.data());
  transpose_rows(L, dk, Lp, [&](int64_t i) { return &w.G[i * dkp]; }, w.Gt.data());
}

// Cumulative log-decay before token i of the chunk (G_{i-1}; zeros for i = 0).
const float* log_decay_before(const Workspace& w, int64_t dkp, int64_t i) {
  return i > 0 ? &w.G[(i - 1) * dkp] : w.zeros.data();
}

// The four intra-chunk matrices M_qk, M_qb (lower, with diagonal) and M_ak, M_ab
// (strictly lower), zero above.
void intra_chunk_matrices(const Problem& p, Workspace& w, int64_t L, int64_t Lp) {
  const int64_t dk = p.dk, dkp = p.dkp;
  for (int64_t s = 0; s < L; s += kSubBlock) {
    const int64_t e = std::min(L, s + kSubBlock);
    if (s > 0) {
      const float* ref = &w.G[(s - 1) * dkp];
      for (int64_t i = s; i < e; ++i) {
        mul_exp_diff(&w.Q[i * dkp], &w.G[i * dkp], ref, &w.Qhat[(i - s) * dkp], dk);
        mul_exp_diff(&w.A[i * dkp], log_decay_before(w, dkp, i), ref, &w.Ahat[(i - s) * dkp], dk);
      }
      for (int64_t d = 0; d < dk; ++d) {
        mul_exp_diff_scalar(&w.Kt[d * Lp], ref[d], &w.Gt[d * Lp], &w.Khat[d * Lp], s);
        mul_exp_diff_scalar(&w.Bt[d * Lp], ref[d], &w.Gt[d * Lp], &w.Bhat[d * Lp], s);
      }
      const int64_t rows = e - s;
      chunk_gemm(rows, s, dk, w.Qhat.data(), dkp, w.Khat.data(), Lp, &w.Mqk[s * Lp], Lp, false);
      chunk_gemm(rows, s, dk, w.Qhat.data(), dkp, w.Bhat.data(), Lp, &w.Mqb[s * Lp], Lp, false);
      chunk_gemm(rows, s, dk, w.Ahat.data(), dkp, w.Khat.data(), Lp, &w.Mak[s * Lp], Lp, false);
      chunk_gemm(rows, s, dk, w.Ahat.data(), dkp, w.Bhat.data(), Lp, &w.Mab[s * Lp], Lp, false);
    }
    for (int64_t i = s; i < e; ++i) {
      const bool next = i + 1 < e;
      // Row i of M_a* was filled for j < i by row i - 1's pass (or is the block's first).
      std::fill(&w.Mak[i * Lp + i], &w.Mak[i * Lp + L], 0.f);
      std::fill(&w.Mab[i * Lp + i], &w.Mab[i * Lp + L], 0.f);
      dplr_decayed_dots(&w.Q[i * dkp], next ? &w.A[(i + 1) * dkp] : nullptr, w.K.data(), w.Bk.data(), w.W.data(),
                        dkp, s, i, &w.Mqk[i * Lp], &w.Mqb[i * Lp], next ? &w.Mak[(i + 1) * Lp] : nullptr,
                        next ? &w.Mab[(i + 1) * Lp] : nullptr, w.scratch.data());
      std::fill(&w.Mqk[i * Lp + i + 1], &w.Mqk[i * Lp + L], 0.f);
      std::fill(&w.Mqb[i * Lp + i + 1], &w.Mqb[i * Lp + L], 0.f);
    }
  }
}

void run_chunked(const Problem& p, Workspace& w, int64_t b, int64_t h, int64_t Lp) {
  const int64_t dk = p.dk, dkp = p.dkp, dvp = p.dvp, C = p.opt.chunk;
  float* S = w.state;
  for (int64_t t0 = 0; t0 < p.T; t0 += C) {
    const int64_t L = std::min(C, p.T - t0);
    pack_chunk(p, w, b, h, t0, L, Lp);
    intra_chunk_matrices(p, w, L, Lp);
    // U = S_{i-1}^T a_i: (I - M_ab) U = (A * exp G_{i-1}) S0 + M_ak V.
    for (int64_t i = 0; i < L; ++i)
      mul_exp_diff(&w.A[i * dkp], log_decay_before(w, dkp, i), w.zeros.data(), &w.X[i * dkp], dk);
    chunk_gemm(L, dvp, dk, w.X.data(), dkp, S, dvp, w.U.data(), dvp, false);
    chunk_gemm(L, dvp, L, w.Mak.data(), Lp, w.V.data(), dvp, w.U.data(), dvp, true, true);
    for (int64_t i = 1; i < L; ++i)
      chunk_gemm(1, dvp, i, &w.Mab[i * Lp], Lp, w.U.data(), dvp, &w.U[i * dvp], dvp, true);
    // O = (Q * exp G) S0 + M_qk V + M_qb U.
    for (int64_t i = 0; i < L; ++i) mul_exp_diff(&w.Q[i * dkp], &w.G[i * dkp], w.zeros.data(), &w.X[i * dkp], dk);
    chunk_gemm(L, dvp, dk, w.X.data(), dkp, S, dvp, w.O.data(), dvp, false);
    chunk_gemm(L, dvp, L, w.Mqk.data(), Lp, w.V.data(), dvp, w.O.data(), dvp, true, true);
    chunk_gemm(L, dvp, L, w.Mqb.data(), Lp, w.U.data(), dvp, w.O.data(), dvp, true, true);
    for (int64_t i = 0; i < L; ++i) std::copy_n(&w.O[i * dvp], p.dv, p.o.at(b, t0 + i, h));
    // The state to the end of the chunk.
    const float* last = &w.G[(L - 1) * dkp];
    for (int64_t d = 0; d < dk; ++d) {
      const float decay = std::exp(last[d]);
      for (int64_t c = 0; c < dvp; ++c) S[d * dvp + c] *= decay;
      mul_exp_diff_scalar(&w.Kt[d * Lp], last[d], &w.Gt[d * Lp], &w.Khat[d * Lp], L);
      mul_exp_diff_scalar(&w.Bt[d * Lp], last[d], &w.Gt[d * Lp], &w.Bhat[d * Lp], L);
    }
    chunk_gemm(dk, dvp, L, w.Khat.data(), Lp, w.V.data(), dvp, S, dvp, true);
    chunk_gemm(dk, dvp, L, w.Bhat.data(), Lp, w.U.data(), dvp, S, dvp, true);
  }
}

HeadRows per_head_rows(const Tensor& t, const char* what, int64_t B, int64_t T, int64_t H, int64_t d) {
  const HeadRows rows = head_rows(t, what, B, T, H, d);
  if (rows.group != 1)
    throw Error(std::string(what) + ": expected " + std::to_string(H) + " heads, got " + t.str());
  return rows;
}

}  // namespace

void generalized_delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& a, const Tensor& b,
                            const Tensor& log_w, const Tensor& state, const Tensor& o,
                            const GeneralizedDeltaRuleOptions& options) {
  for (const auto* t : {&q, &v, &o})
    if (!t->defined() || t->ndim() != 4)
      throw Error("generalized_delta_rule: q, v, o: expected 4-d tensors [B, T, heads, d]");
  if (options.chunk < 1 || options.chunk > 1024)
    throw Error("generalized_delta_rule: chunk: expected 1..1024, got " + std::to_string(options.chunk));
  Problem p{};
  p.opt = options;
  p.B = q.dim(0);
  p.T = q.dim(1);
  p.H = q.dim(2);
  p.dk = q.dim(3);
  p.dv = v.dim(3);
  p.dkp = round_up_to_align(p.dk);
  p.dvp = round_up_to_align(p.dv);
  if (p.T < 1) throw Error("generalized_delta_rule: q: expected T >= 1, got " + q.str());
  p.q = per_head_rows(q, "generalized_delta_rule: q", p.B, p.T, p.H, p.dk);
  p.k = per_head_rows(k, "generalized_delta_rule: k", p.B, p.T, p.H, p.dk);
  p.v = per_head_rows(v, "generalized_delta_rule: v", p.B, p.T, p.H, p.dv);
  p.a = per_head_rows(a, "generalized_delta_rule: a", p.B, p.T, p.H, p.dk);
  p.b = per_head_rows(b, "generalized_delta_rule: b", p.B, p.T, p.H, p.dk);
  p.log_w = per_head_rows(log_w, "generalized_delta_rule: log_w", p.B, p.T, p.H, p.dk);
  p.o = head_rows_out(o, "generalized_delta_rule: o", p.B, p.T, p.H, p.dv);
  const bool recurrent = options.algorithm != LinearAlgorithm::chunked;
  const bool check_in_pass = recurrent && p.T >= kCheckInPassTokens;
  if (!check_in_pass) check_rows_at_most_zero(p.log_w, p.B, p.T, p.H, p.dk, "generalized_delta_rule: log_w");
  check_dtype(state, DType::f32, "generalized_delta_rule: state");
  check_shape(state, Shape{p.B, p.H, p.dk, p.dv}, "generalized_delta_rule: state");
  check_contiguous(state, "generalized_delta_rule: state");
  p.state = state.mutable_data<float>();

  const int64_t Lp = round_up_to_align(std::min(options.chunk, p.T));
  const int64_t state_size = p.dk * p.dvp;
  const auto copies = std::make_unique_for_overwrite<float[]>(check_in_pass ? p.B * p.H * state_size : 0);
  std::atomic<bool> bad_decay{false};
  parallel_for(p.B * p.H, 1, [&](int64_t begin, int64_t end) {
    Workspace w(p, recurrent ? std::min<int64_t>(p.T, kBlockTokens) : Lp, recurrent);
    if (recurrent) {
      run_recurrent(p, w, begin, end, check_in_pass ? copies.get() : nullptr, bad_decay);
      return;
    }
    for (int64_t task = begin; task < end; ++task)
      with_padded_state(p.state + task * p.dk * p.dv, p.dk, p.dv, p.dvp, w.S.data(), [&](float* st) {
        w.state = st;
        run_chunked(p, w, task / p.H, task % p.H, Lp);
      });
  });
  if (bad_decay) {
    check_rows_at_most_zero(p.log_w, p.B, p.T, p.H, p.dk, "generalized_delta_rule: log_w");
    throw Error("generalized_delta_rule: log_w: a value > 0 or NaN seen in the recurrence was not found again");
  }
  if (check_in_pass)
    parallel_for(p.B * p.H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task)
        unpad_state_rows(&copies[task * state_size], p.dk, p.dv, p.dvp,
                         p.state + task * p.dk * p.dv);
    });
}

}  // namespace subq::ops
