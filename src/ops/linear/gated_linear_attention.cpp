// Chunked gated linear attention (Lightning Attention's split). For a chunk of L tokens
// with cumulative log-gates G_i = sum_{j<=i} log a_j (inside the chunk) and carried
// state S:
//   o_i   = sum_{j<=i} <q_i, k_j>_{exp(G_i - G_j)} v_j  +  (q_i * exp(G_i))^T S
//   S_new = diag(exp(G_L)) S + sum_j (k_j * exp(G_L - G_j)) v_j^T
// Every exponent is <= 0, so nothing overflows however strong the decay or long the
// chunk. For a vector gate the intra-chunk decay does not factor into a Q K^T product
// without dividing by cumulative products, so the chunk is cut into 16-token blocks:
// block I against all earlier tokens is one GEMM with both factors taken relative to the
// token just before block I (each factor <= 1); inside the 16 x 16 diagonal blocks the
// decays are running products of the per-token decays (exp of each log-gate once).
#include "src/ops/linear/gated_linear_attention.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/common/activations.h"
#include "src/ops/linear/chunk_kernels.h"
#include "src/ops/linear/head_layout.h"

namespace subq::ops {
namespace {

constexpr int64_t kSubBlock = kChunkAlign;
// One chunk as long as the sequence is the quadratic (masked attention) form; the
// workspace holds chunk^2 floats, so cap it (4096^2 floats = 64 MiB).
constexpr int64_t kMaxChunk = 4096;

struct Problem {
  int64_t B, T, H, dk, dv;
  int64_t dvs;  // value columns in the state: dv (+1 for the normaliser)
  int64_t dvp;  // dvs padded to kChunkAlign
  HeadRows q, k, v;
  HeadRowsOut o;
  LinearGate gate;
  const float* gate_per_head = nullptr;
  TokenScalars gate_per_token;
  HeadRows gate_vector;
  TokenScalars value_scale;
  bool scaled_values = false;
  float* state;
  LinearAttentionOptions opt;
};

template <FeatureMap F>
float feature(float x) {
  if constexpr (F == FeatureMap::elu_plus_one) return x > 0.f ? x + 1.f : std::exp(x);
  else if constexpr (F == FeatureMap::relu) return x > 0.f ? x : 0.f;
  else return x;
}

// Log-gate of token t for head h under a scalar gate (none, per head, per token).
float scalar_log_gate(const Problem& p, int64_t b, int64_t t, int64_t h) {
  switch (p.gate) {
    case LinearGate::per_head: return p.gate_per_head[h];
    case LinearGate::per_token: return p.gate_per_token.at(b, t, h);
    default: return 0.f;
  }
}

void write_output(const Problem& p, const float* row, float* out) {
  if (!p.opt.normalize) {
    std::copy_n(row, p.dv, out);
    return;
  }
  const float inv = 1.f / (row[p.dv] + p.opt.normalizer_eps);
  for (int64_t j = 0; j < p.dv; ++j) out[j] = row[j] * inv;
}

struct LinearWorkspaceFloats;

// A thread's buffers for one call (one pass, in the chunk-parallel form), zeroed.
struct Workspace {
  // The state being advanced: the caller's memory when its rows need no padding, else S.
  float* state = nullptr;
  // The chunk's packed queries [L, dk] and transposed keys [dk, Lp]: Q and Kt, or a block
  // shared by a group of heads, which also holds their undecayed causal scores.
  const float* q = nullptr;
  const float* kt = nullptr;
  const float* scores = nullptr;
  // Columns of Khat that hold decayed keys (vector gate), relative to token khat_cols - 1.
  int64_t khat_cols = 0;
  Piece S, Q, Kr, Kt, Khat, Qhat, G, Gt, A, att, V, O, zeros, running_decay, ref_decay;
  // The recurrence (a block of kBlockTokens rows) sizes only its own buffers.
  Workspace(const Problem& p, int64_t Lp, bool recurrent)
      : memory_({{&S, p.dvs != p.dvp ? p.dk * p.dvp : 0},
                 {&Q, Lp * p.dk},
                 {&Kr, Lp * p.dk},
                 {&Qhat, Lp * p.dk},
                 {&Khat, p.dk * Lp},
                 {&Gt, p.dk * Lp},
                 {&att, Lp * Lp},
                 {&V, Lp * p.dvp},
                 {&O, Lp * p.dvp},
                 {&running_decay, p.dk},
                 {&Kt, recurrent ? 0 : p.dk * Lp},
                 {&G, recurrent ? 0 : Lp * gate_width(p)},
                 {&A, recurrent ? 0 : Lp * gate_width(p)},
                 {&zeros, recurrent ? 0 : p.dk},
                 {&ref_decay, recurrent ? 0 : p.dk}}) {}

 private:
  static int64_t gate_width(const Problem& p) { return p.gate == LinearGate::per_token_vector ? p.dk : 1; }
  ZeroedPieces<LinearWorkspaceFloats> memory_;
};

void load_value_row(const Problem& p, int64_t b, int64_t t, int64_t h, float* row) {
  const float* v = p.v.at(b, t, h);
  if (p.scaled_values) {
    const float c = p.value_scale.at(b, t, h);
    for (int64_t j = 0; j < p.dv; ++j) row[j] = c * v[j];
  } else {
    std::copy_n(v, p.dv, row);
  }
  std::fill(row + p.dv, row + p.dvp, 0.f);
  if (p.opt.normalize) row[p.dv] = 1.f;
}

// The recurrence's rows of one token, in row `i` of the block: its decay (dk values, in
// the workspace's Gt buffer, which the recurrence has no other use for), and where its
// q, k and value rows are read and its output row written: straight from and to the
// caller's tensors where nothing changes them (copies took a third of the vector gate's
// time per token). q is read unscaled; the scale is applied where it is used.
template <FeatureMap F>
struct RecurrentRows {
  const Problem& p;
  Workspace& w;
  int64_t b, h;
  float* decay;
  const float *q[kBlockTokens], *k[kBlockTokens], *v[kBlockTokens];
  float* o[kBlockTokens];

  RecurrentRows(const Problem& p_, Workspace& w_, int64_t b_, int64_t h_)
      : p(p_), w(w_), b(b_), h(h_), decay(w_.Gt.data()) {}

  bool direct_v() const { return !p.scaled_values && p.dvp == p.dv; }
  bool direct_o() const { return p.dvp == p.dv; }  // dv a multiple of the alignment, no normaliser

  void load(int64_t t, int i) {
    const int64_t dk = p.dk;
    float* dec = decay + i * dk;
    if (p.gate == LinearGate::per_token_vector) ops::exp(p.gate_vector.at(b, t, h), dec, static_cast<size_t>(dk));
    else std::fill_n(dec, dk, std::exp(scalar_log_gate(p, b, t, h)));
    q[i] = p.q.at(b, t, h);
    k[i] = p.k.at(b, t, h);
    if constexpr (F != FeatureMap::identity) {
      float* qf = w.Q.data() + i * dk;
      float* kf = w.Kr.data() + i * dk;
      for (int64_t d = 0; d < dk; ++d) {
        qf[d] = feature<F>(q[i][d]);
        kf[d] = feature<F>(k[i][d]);
      }
      q[i] = qf;
      k[i] = kf;
    }
    if (direct_v()) {
      v[i] = p.v.at(b, t, h);
    } else {
      load_value_row(p, b, t, h, w.V.data() + i * p.dvp);
      v[i] = w.V.data() + i * p.dvp;
    }
    o[i] = direct_o() ? p.o.at(b, t, h) : w.O.data() + i * p.dvp;
  }
  void store(int64_t t, int i) const {
    if (!direct_o()) write_output(p, o[i], p.o.at(b, t, h));
  }
  void prefetch(int64_t t, RowPrefetch& ahead) const {
    if (t >= p.T) return;
    ahead.add(p.q.at(b, t, h), p.dk);
    ahead.add(p.k.at(b, t, h), p.dk);
    ahead.add(p.v.at(b, t, h), p.dv);
    if (p.gate == LinearGate::per_token_vector) ahead.add(p.gate_vector.at(b, t, h), p.dk);
  }
};

// Token by token, kBlockTokens at a time (linear_attention_block_step); the last
// T % kBlockTokens tokens one at a time. Each block's decayed factors are running
// products of its tokens' decays, multiplied, never divided.
template <FeatureMap F>
void run_recurrent(const Problem& p, Workspace& w, int64_t b, int64_t h) {
  constexpr int M = kBlockTokens;
  const int64_t dk = p.dk;
  RecurrentRows<F> rows(p, w, b, h);
  float* qd = w.Qhat.data();
  float* kd = w.Khat.data();
  float* scores = w.att.data();
  float* whole = w.running_decay.data();
  int64_t t = 0;
  for (; t + M <= p.T; t += M) {
    RowPrefetch ahead;
    for (int i = 0; i < M; ++i) {
      rows.prefetch(t + M + i, ahead);
      rows.load(t + i, i);
    }
    linear_attention_block_factors(rows.decay, rows.q, p.opt.scale, rows.k, dk, whole, kd, qd, scores);
    linear_attention_block_step(w.state, dk, p.dvp, whole, kd, qd, scores, rows.v, rows.o, ahead);
    for (int i = 0; i < M; ++i) rows.store(t + i, i);
  }
  for (; t < p.T; ++t) {
    rows.load(t, 0);
    float* q = w.Qhat.data();
    for (int64_t d = 0; d < dk; ++d) q[d] = rows.q[0][d] * p.opt.scale;
    linear_attention_step(w.state, dk, p.dvp, rows.decay, rows.k[0], rows.v[0], q, rows.o[0]);
    rows.store(t, 0);
  }
}

void run_recurrent(const Problem& p, Workspace& w, int64_t b, int64_t h) {
  switch (p.opt.feature_map) {
    case FeatureMap::elu_plus_one: run_recurrent<FeatureMap::elu_plus_one>(p, w, b, h); return;
    case FeatureMap::relu: run_recurrent<FeatureMap::relu>(p, w, b, h); return;
    default: run_recurrent<FeatureMap::identity>(p, w, b, h); return;
  }
}

// Brings the first `cols` columns of w.Khat (keys transposed, vector gate) to
// k_j exp(G_r - G_j) with r = cols - 1: columns it already holds, relative to an earlier
// token, are rescaled by one factor per row (both factors <= 1); only new columns take an
// exponential per element.
void advance_decayed_keys(const Problem& p, Workspace& w, int64_t Lp, int64_t cols) {
  const int64_t dk = p.dk, have = w.khat_cols;
  const float* ref = w.G.data() + (cols - 1) * dk;
  for (int64_t d = 0; d < dk; ++d) {
    float* row = w.Khat.data() + d * Lp;
    if (have > 0) {
      const float f = std::exp(ref[d] - w.G[(have - 1) * dk + d]);
      for (int64_t j = 0; j < have; ++j) row[j] *= f;
    }
    mul_exp_diff_scalar(w.kt + d * Lp + have, ref[d], w.Gt.data() + d * Lp + have, row + have, cols - have);
  }
  w.khat_cols = cols;
}

// Intra-chunk attention matrix for a vector gate (see the file comment). Leaves in w.Qhat
// the queries decayed to the chunk's start, q_i exp(G_i), which the inter-chunk product
// takes: for sub-blocks after the first, from the sub-block's own decays times exp(G_ref).
void vector_gate_attention(const Problem& p, Workspace& w, int64_t L, int64_t Lp) {
  const int64_t dk = p.dk;
  for (int64_t s = 0; s < L; s += kSubBlock) {
    const int64_t e = std::min(L, s + kSubBlock);
    if (s > 0) {
      const float* ref = w.G.data() + (s - 1) * dk;
      for (int64_t i = s; i < e; ++i)
        mul_exp_diff(w.Q.data() + i * dk, w.G.data() + i * dk, ref, w.Qhat.data() + i * dk, dk);
      advance_decayed_keys(p, w, Lp, s);
      chunk_gemm(e - s, s, dk, w.Qhat.data() + s * dk, dk, w.Khat.data(), Lp, w.att.data() + s * Lp, Lp, false);
      ops::exp(ref, w.ref_decay.data(), static_cast<size_t>(dk));
      for (int64_t i = s; i < e; ++i)
        for (int64_t d = 0; d < dk; ++d) w.Qhat[i * dk + d] *= w.ref_decay[d];
    } else {
      for (int64_t i = s; i < e; ++i)
        mul_exp_diff(w.Q.data() + i * dk, w.G.data() + i * dk, w.zeros.data(), w.Qhat.data() + i * dk, dk);
    }
    for (int64_t i = s; i < e; ++i) {
      float* row = w.att.data() + i * Lp;
      decayed_dots_backward(w.Q.data() + i * dk, w.Kr.data(), w.A.data(), dk, s, i, row, w.running_decay.data());
      std::fill(row + i + 1, row + L, 0.f);
    }
  }
}

// q (scaled) and k of chunk [t0, t0 + L) through the feature map: k transposed (kt, dk
// rows of Lp), and by rows too (kr) where the vector gate's diagonal blocks read them;
// asks for the next chunk's q and k rows.
template <FeatureMap F>
void pack_queries_keys(const Problem& p, int64_t b, int64_t h, int64_t t0, int64_t L, int64_t Lp, float* q, float* kt,
                       float* kr) {
  const int64_t dk = p.dk;
  for (int64_t i = 0; i < L; ++i) {
    const float* qt = p.q.at(b, t0 + i, h);
    for (int64_t d = 0; d < dk; ++d) q[i * dk + d] = feature<F>(qt[d]) * p.opt.scale;
    if (kr)
      for (int64_t d = 0; d < dk; ++d) kr[i * dk + d] = feature<F>(p.k.at(b, t0 + i, h)[d]);
  }
  transpose_rows(L, dk, Lp, [&](int64_t i) { return p.k.at(b, t0 + i, h); }, kt, [](float x) { return feature<F>(x); });
  for (int64_t t = t0 + L; t < std::min(p.T, t0 + 2 * L); ++t) {
    prefetch_row_to_l2(p.q.at(b, t, h), dk);
    prefetch_row_to_l2(p.k.at(b, t, h), dk);
  }
}

void pack_queries_keys(const Problem& p, int64_t b, int64_t h, int64_t t0, int64_t L, int64_t Lp, float* q, float* kt,
                       float* kr) {
  switch (p.opt.feature_map) {
    case FeatureMap::elu_plus_one: pack_queries_keys<FeatureMap::elu_plus_one>(p, b, h, t0, L, Lp, q, kt, kr); return;
    case FeatureMap::relu: pack_queries_keys<FeatureMap::relu>(p, b, h, t0, L, Lp, q, kt, kr); return;
    default: pack_queries_keys<FeatureMap::identity>(p, b, h, t0, L, Lp, q, kt, kr); return;
  }
}

// Packs what is head (b, h)'s own in chunk [t0, t0 + L): v and the cumulative log-gates;
// asks for the next chunk's value rows while this one is computed.
void pack_head_rows(const Problem& p, Workspace& w, int64_t b, int64_t h, int64_t t0, int64_t L, int64_t Lp) {
  const int64_t dk = p.dk, dvp = p.dvp;
  const bool vector = p.gate == LinearGate::per_token_vector;
  for (int64_t t = t0 + L; t < std::min(p.T, t0 + 2 * L); ++t) prefetch_row_to_l2(p.v.at(b, t, h), p.dv);
  w.khat_cols = 0;
  for (int64_t i = 0; i < L; ++i) {
    const int64_t t = t0 + i;
    load_value_row(p, b, t, h, w.V.data() + i * dvp);
    if (vector) {
      const float* log_a = p.gate_vector.at(b, t, h);
      float* g = w.G.data() + i * dk;
      ops::exp(log_a, w.A.data() + i * dk, static_cast<size_t>(dk));
      for (int64_t d = 0; d < dk; ++d) g[d] = i > 0 ? g[d - dk] + log_a[d] : log_a[d];
    } else {
      w.G[i] = scalar_log_gate(p, b, t, h) + (i > 0 ? w.G[i - 1] : 0.f);
    }
  }
  if (vector)
    transpose_rows(L, dk, Lp, [&](int64_t i) { return w.G.data() + i * dk; }, w.Gt.data());
}

// Packs chunk [t0, t0 + L) of head (b, h): its queries and keys, then its own rows.
void pack_chunk(const Problem& p, Workspace& w, int64_t b, int64_t h, int64_t t0, int64_t L, int64_t Lp) {
  pack_queries_keys(p, b, h, t0, L, Lp, w.Q.data(), w.Kt.data(),
                    p.gate == LinearGate::per_token_vector ? w.Kr.data() : nullptr);
  w.q = w.Q.data();
  w.kt = w.Kt.data();
  w.scores = nullptr;
  pack_head_rows(p, w, b, h, t0, L, Lp);
}

// Heads that read the same q and k rows (Mamba-2's groups of B and C) share a chunk's
// packing and causal scores: one block per (batch, group, chunk) of q [Lp, dk],
// k^T [dk, Lp] and undecayed scores q k^T [Lp, Lp].
bool shares_queries_keys(const Problem& p) {
  return p.gate != LinearGate::per_token_vector && p.q.group > 1 && p.q.group == p.k.group;
}

int64_t shared_block_floats(const Problem& p, int64_t Lp) { return 2 * Lp * p.dk + Lp * Lp; }

void pack_shared_block(const Problem& p, int64_t b, int64_t h, int64_t t0, int64_t L, int64_t Lp, float* block) {
  float* q = block;
  float* kt = q + Lp * p.dk;
  float* scores = kt + p.dk * Lp;
  pack_queries_keys(p, b, h, t0, L, Lp, q, kt, nullptr);
  chunk_gemm_causal(L, Lp, p.dk, q, p.dk, kt, Lp, scores, Lp);
}

void use_shared_block(const Problem& p, Workspace& w, int64_t Lp, const float* block) {
  w.q = block;
  w.kt = block + Lp * p.dk;
  w.scores = w.kt + p.dk * Lp;
}

// Outputs of the packed chunk against w.state, the state at the chunk's start (read only).
void chunk_outputs(const Problem& p, Workspace& w, int64_t b, int64_t h, int64_t t0, int64_t L, int64_t Lp) {
  const int64_t dk = p.dk, dvp = p.dvp;
  const bool vector = p.gate == LinearGate::per_token_vector;
  const bool gated = p.gate != LinearGate::none;
  // Intra-chunk: masked, decayed Q K^T, then times V.
  if (vector) {
    vector_gate_attention(p, w, L, Lp);
  } else {
    if (!w.scores) chunk_gemm_causal(L, Lp, dk, w.q, dk, w.kt, Lp, w.att.data(), Lp);
    const float* scores = w.scores ? w.scores : w.att.data();
    for (int64_t i = 0; i < L; ++i) {
      float* row = w.att.data() + i * Lp;
      const float* src = scores + i * Lp;
      // Whole vectors past the diagonal (overwritten below) rather than a scalar tail.
      if (gated) mul_exp_diff_scalar(src, w.G[i], w.G.data(), row, std::min(Lp, round_up_to_align(i + 1)));
      else if (src != row) std::copy_n(src, i + 1, row);
      std::fill(row + i + 1, row + L, 0.f);
    }
  }
  chunk_gemm(L, dvp, L, w.att.data(), Lp, w.V.data(), dvp, w.O.data(), dvp, false, true);
  // Inter-chunk: decayed queries against the carried state.
  // Queries decayed to the chunk's start (the vector gate's were left in Qhat).
  const float* qdec = gated ? w.Qhat.data() : w.q;
  if (gated && !vector)
    for (int64_t i = 0; i < L; ++i) {
      const float decay = std::exp(w.G[i]);
      for (int64_t d = 0; d < dk; ++d) w.Qhat[i * dk + d] = w.q[i * dk + d] * decay;
    }
  chunk_gemm(L, dvp, dk, qdec, dk, w.state, dvp, w.O.data(), dvp, true);
  for (int64_t i = 0; i < L; ++i) write_output(p, w.O.data() + i * dvp, p.o.at(b, t0 + i, h));
}

// Carries w.state over the packed chunk: diag(exp(G_L)) S + sum_j (k_j exp(G_L - G_j)) v_j^T.
// Scales w.V in place, so it comes after chunk_outputs.
void carry_state(const Problem& p, Workspace& w, int64_t L, int64_t Lp) {
  const int64_t dk = p.dk, dvp = p.dvp;
  const float* kdec = w.kt;
  if (p.gate == LinearGate::per_token_vector) {
    const float* last = w.G.data() + (L - 1) * dk;
    for (int64_t d = 0; d < dk; ++d) {
      const float decay = std::exp(last[d]);
      for (int64_t j = 0; j < dvp; ++j) w.state[d * dvp + j] *= decay;
    }
    advance_decayed_keys(p, w, Lp, L);
    kdec = w.Khat.data();
  } else if (p.gate != LinearGate::none) {
    const float last = w.G[L - 1];
    const float decay = std::exp(last);
    for (int64_t i = 0; i < dk * dvp; ++i) w.state[i] *= decay;
    for (int64_t j = 0; j < L; ++j) {
      const float wj = std::exp(last - w.G[j]);
      float* row = w.V.data() + j * dvp;
      for (int64_t c = 0; c < dvp; ++c) row[c] *= wj;
    }
  }
  chunk_gemm(dk, dvp, L, kdec, Lp, w.V.data(), dvp, w.state, dvp, true);
}

// The decay of the packed chunk's whole length, per state row: exp(G_L) (dk floats).
void chunk_decay(const Problem& p, const Workspace& w, int64_t L, float* out) {
  switch (p.gate) {
    case LinearGate::none: std::fill_n(out, p.dk, 1.f); return;
    case LinearGate::per_token_vector: ops::exp(w.G.data() + (L - 1) * p.dk, out, static_cast<size_t>(p.dk)); return;
    default: std::fill_n(out, p.dk, std::exp(w.G[L - 1])); return;
  }
}

void run_chunked(const Problem& p, Workspace& w, int64_t b, int64_t h, int64_t Lp) {
  const int64_t C = p.opt.chunk;
  for (int64_t t0 = 0; t0 < p.T; t0 += C) {
    const int64_t L = std::min(C, p.T - t0);
    pack_chunk(p, w, b, h, t0, L, Lp);
    chunk_outputs(p, w, b, h, t0, L, Lp);
    carry_state(p, w, L, Lp);
  }
}

// Scratch tags of the chunk-parallel form.
struct ChunkStates;
struct ChunkDecays;
struct HeadStates;

// The chunked form with work items of (head, chunk), for when batch x heads would leave
// threads idle (one head ran on one thread whatever the pool). Chunks go in segments as
// long as 32 MiB of states allow (segments of four items per thread, each three more
// parallel regions, ran 1.1-1.6x slower); per segment, (1) each chunk's own
// contribution to the state (its carry from a zero state) and its total decay, (2) per
// head, the states at the chunks' starts in one pass over the segment, (3) each chunk's
// outputs from its start state (packed again: cheaper than keeping every chunk packed).
void run_chunk_parallel(const Problem& p, int64_t Lp) {
  const int64_t tasks = p.B * p.H, C = p.opt.chunk, chunks = (p.T + C - 1) / C;
  const int64_t sd = p.dk * p.dvp;
  // Chunks per segment: as many as 32 MiB of states hold (kept scratch: no allocation
  // after the first call), and at least four items per thread.
  const int64_t by_memory = (kKeptScratchBytes / sizeof(float)) / std::max<int64_t>(1, tasks * sd);
  const int64_t want = (4 * num_threads() + tasks - 1) / tasks;
  const int64_t seg = std::clamp<int64_t>(std::max(want, by_memory), 1, chunks);
  const Scratch<ChunkStates, float> states(static_cast<size_t>(tasks * seg * sd));
  const Scratch<ChunkDecays, float> decays(static_cast<size_t>(tasks * seg * p.dk));
  const Scratch<HeadStates, float> heads(static_cast<size_t>(tasks * sd));
  parallel_for(tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task)
      pad_state_rows(p.state + task * p.dk * p.dvs, p.dk, p.dvs, p.dvp, heads.data() + task * sd);
  });
  for (int64_t c0 = 0; c0 < chunks; c0 += seg) {
    const int64_t n = std::min(seg, chunks - c0);
    const auto each_chunk = [&](auto&& fn) {
      parallel_for(tasks * n, 1, [&](int64_t begin, int64_t end) {
        Workspace w(p, Lp, false);
        for (int64_t item = begin; item < end; ++item) {
          const int64_t task = item / n, c = item % n;
          const int64_t t0 = (c0 + c) * C, L = std::min(C, p.T - t0);
          pack_chunk(p, w, task / p.H, task % p.H, t0, L, Lp);
          fn(w, task, c, t0, L);
        }
      });
    };
    each_chunk([&](Workspace& w, int64_t task, int64_t c, int64_t, int64_t L) {
      w.state = states.data() + (task * seg + c) * sd;
      std::fill_n(w.state, sd, 0.f);
      carry_state(p, w, L, Lp);
      chunk_decay(p, w, L, decays.data() + (task * seg + c) * p.dk);
    });
    parallel_for(tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        float* cur = heads.data() + task * sd;
        for (int64_t c = 0; c < n; ++c) {
          float* u = states.data() + (task * seg + c) * sd;
          const float* decay = decays.data() + (task * seg + c) * p.dk;
          for (int64_t d = 0; d < p.dk; ++d)
            for (int64_t j = 0; j < p.dvp; ++j) {
              const int64_t i = d * p.dvp + j;
              const float own = u[i];
              u[i] = cur[i];
              cur[i] = decay[d] * cur[i] + own;
            }
        }
      }
    });
    each_chunk([&](Workspace& w, int64_t task, int64_t c, int64_t t0, int64_t L) {
      w.state = states.data() + (task * seg + c) * sd;
      chunk_outputs(p, w, task / p.H, task % p.H, t0, L, Lp);
    });
  }
  for (int64_t task = 0; task < tasks; ++task)
    unpad_state_rows(heads.data() + task * sd, p.dk, p.dvs, p.dvp, p.state + task * p.dk * p.dvs);
}

struct SharedBlocks;

// The chunked form for heads sharing q and k: per segment of chunks (as many as 32 MiB
// of shared blocks hold), every (batch, group, chunk) block is packed once, then each
// head runs over the segment's chunks from the blocks of its group.
void run_shared_groups(const Problem& p, int64_t Lp) {
  const int64_t groups = p.H / p.q.group, C = p.opt.chunk, chunks = (p.T + C - 1) / C;
  const int64_t block = shared_block_floats(p, Lp);
  const int64_t by_memory = (kKeptScratchBytes / sizeof(float)) / (p.B * groups * block);
  const int64_t seg = std::clamp<int64_t>(by_memory, 1, chunks);
  const Scratch<SharedBlocks, float> blocks(static_cast<size_t>(p.B * groups * seg * block));
  for (int64_t c0 = 0; c0 < chunks; c0 += seg) {
    const int64_t n = std::min(seg, chunks - c0);
    parallel_for(p.B * groups * n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t bg = item / n, t0 = (c0 + item % n) * C;
        pack_shared_block(p, bg / groups, (bg % groups) * p.q.group, t0, std::min(C, p.T - t0), Lp,
                          blocks.data() + item * block);
      }
    });
    parallel_for(p.B * p.H, 1, [&](int64_t begin, int64_t end) {
      Workspace w(p, Lp, false);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / p.H, h = task % p.H;
        const float* first = blocks.data() + (b * groups + h / p.q.group) * n * block;
        with_padded_state(p.state + task * p.dk * p.dvs, p.dk, p.dvs, p.dvp, w.S.data(), [&](float* state) {
          w.state = state;
          for (int64_t c = 0; c < n; ++c) {
            const int64_t t0 = (c0 + c) * C, L = std::min(C, p.T - t0);
            use_shared_block(p, w, Lp, first + c * block);
            pack_head_rows(p, w, b, h, t0, L, Lp);
            chunk_outputs(p, w, b, h, t0, L, Lp);
            carry_state(p, w, L, Lp);
          }
        });
      }
    });
  }
}

void check_log_gate(const Problem& p, const Tensor& g) {
  auto bad = [](float x) { return !(x <= 0.f); };
  switch (p.gate) {
    case LinearGate::none:
      if (g.defined()) throw Error("gated_linear_attention: log_gate: expected none for gate=none, got " + g.str());
      return;
    case LinearGate::per_head:
      check_dtype(g, DType::f32, "gated_linear_attention: log_gate");
      check_shape(g, Shape{p.H}, "gated_linear_attention: log_gate");
      check_contiguous(g, "gated_linear_attention: log_gate");
      for (int64_t h = 0; h < p.H; ++h)
        if (bad(g.data<float>()[h]))
          throw Error("gated_linear_attention: log_gate: expected values <= 0, got " +
                      std::to_string(g.data<float>()[h]) + " for head " + std::to_string(h));
      return;
    case LinearGate::per_token:
      for (int64_t b = 0; b < p.B; ++b)
        for (int64_t t = 0; t < p.T; ++t)
          for (int64_t h = 0; h < p.H; ++h)
            if (bad(p.gate_per_token.at(b, t, h)))
              throw Error("gated_linear_attention: log_gate: expected values <= 0, got " +
                          std::to_string(p.gate_per_token.at(b, t, h)));
      return;
    case LinearGate::per_token_vector:
      check_rows_at_most_zero(p.gate_vector, p.B, p.T, p.H, p.dk, "gated_linear_attention: log_gate");
      return;
  }
}

}  // namespace

void gated_linear_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_gate,
                            const Tensor& state, const Tensor& o, const LinearAttentionOptions& options,
                            const Tensor& value_scale) {
  for (const auto* t : {&q, &k, &v, &o})
    if (!t->defined() || t->ndim() != 4)
      throw Error("gated_linear_attention: q, k, v, o: expected 4-d tensors [B, T, heads, d]");
  if (options.chunk < 1 || options.chunk > kMaxChunk)
    throw Error("gated_linear_attention: chunk: expected 1.." + std::to_string(kMaxChunk) + ", got " + std::to_string(options.chunk));
  Problem p{};
  p.opt = options;
  p.B = q.dim(0);
  p.T = q.dim(1);
  p.H = std::max({q.dim(2), k.dim(2), v.dim(2)});
  p.dk = q.dim(3);
  p.dv = v.dim(3);
  if (p.T < 1) throw Error("gated_linear_attention: q: expected T >= 1, got " + q.str());
  p.q = head_rows(q, "gated_linear_attention: q", p.B, p.T, p.H, p.dk);
  p.k = head_rows(k, "gated_linear_attention: k", p.B, p.T, p.H, p.dk);
  p.v = head_rows(v, "gated_linear_attention: v", p.B, p.T, p.H, p.dv);
  p.o = head_rows_out(o, "gated_linear_attention: o", p.B, p.T, p.H, p.dv);
  if (value_scale.defined()) {
    p.value_scale = token_scalars(value_scale, "gated_linear_attention: value_scale", p.B, p.T, p.H);
    p.scaled_values = true;
  }
  p.dvs = p.dv + (options.normalize ? 1 : 0);
  p.dvp = round_up_to_align(p.dvs);
  p.gate = options.gate;
  if (p.gate == LinearGate::per_token) p.gate_per_token = token_scalars(log_gate, "gated_linear_attention: log_gate", p.B, p.T, p.H);
  if (p.gate == LinearGate::per_token_vector) {
    p.gate_vector = head_rows(log_gate, "gated_linear_attention: log_gate", p.B, p.T, p.H, p.dk);
    if (p.gate_vector.group != 1)
      throw Error("gated_linear_attention: log_gate: expected one gate per output head (" + std::to_string(p.H) +
                  "), got " + log_gate.str());
  }
  check_log_gate(p, log_gate);
  if (p.gate == LinearGate::per_head) p.gate_per_head = log_gate.data<float>();
  check_dtype(state, DType::f32, "gated_linear_attention: state");
  check_shape(state, Shape{p.B, p.H, p.dk, p.dvs}, "gated_linear_attention: state");
  check_contiguous(state, "gated_linear_attention: state");
  p.state = state.mutable_data<float>();

  // With heads for at most half the threads, the chunked form splits heads and chunks
  // (the extra passes cost less than the idle threads; 24 heads on 16 threads gained
  // nothing measurable that way, so busier pools keep one head per work item).
  const bool chunk_parallel = p.T > options.chunk && 2 * p.B * p.H <= num_threads();
  // Where neither that split nor a group's shared q k^T (Mamba-2) helps the chunked form,
  // automatic runs the recurrence in blocks of tokens at every length: about as many
  // operations per token (2 + 1/kBlockTokens per state element against the chunk's 2 plus
  // its intra-chunk products) with no packing, and it measured 1.4-1.8x faster
  // (docs/benchmarks.md).
  const bool recurrent =
      options.algorithm == LinearAlgorithm::recurrent ||
      (options.algorithm == LinearAlgorithm::automatic &&
       (p.T < kLinearAttentionRecurrentBelow || !(chunk_parallel || shares_queries_keys(p))));
  const int64_t Lp = round_up_to_align(std::min(options.chunk, p.T));
  if (!recurrent && chunk_parallel) {
    run_chunk_parallel(p, Lp);
    return;
  }
  if (!recurrent && shares_queries_keys(p)) {
    run_shared_groups(p, Lp);
    return;
  }
  parallel_for(p.B * p.H, 1, [&](int64_t begin, int64_t end) {
    Workspace w(p, recurrent ? std::min<int64_t>(p.T, kBlockTokens) : Lp, recurrent);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / p.H, h = task % p.H;
      with_padded_state(p.state + task * p.dk * p.dvs, p.dk, p.dvs, p.dvp, w.S.data(), [&](float* state) {
        w.state = state;
        if (recurrent) run_recurrent(p, w, b, h);
        else run_chunked(p, w, b, h, Lp);
      });
    }
  });
}

}  // namespace subq::ops
