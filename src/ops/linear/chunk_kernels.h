// Internal SIMD building blocks shared by the linear-attention and delta-rule kernels:
// small row-major GEMMs on per-chunk workspaces, exp-decay scalings, and the
// recurrences' steps (one token, or a block of kBlockTokens per pass over the state).
// Single-threaded (callers parallelise over batch x heads). Matrix widths N must be a
// multiple of kChunkAlign: callers pad their workspaces with zeros so no tail is needed.
#pragma once

#include <algorithm>
#include <cstdint>

namespace subq::ops {

inline constexpr int64_t kChunkAlign = 16;  // the widest f32 vector (AVX-512)

// Tokens per linear_attention_block_step.
inline constexpr int kBlockTokens = 4;

inline int64_t round_up_to_align(int64_t n) { return (n + kChunkAlign - 1) / kChunkAlign * kChunkAlign; }

// out[d * ld + i] = map(row(i)[d]) for L rows of n (a chunk's rows to its transposed
// layout), in tiles of a few rows: each row of out gets a run of contiguous stores (one
// store per element and row, a chunk's width apart, thrashed L1).
struct SameValue {
  float operator()(float x) const { return x; }
};
template <class Row, class Map = SameValue>
void transpose_rows(int64_t L, int64_t n, int64_t ld, Row row, float* out, Map map = {}) {
  constexpr int64_t kTile = 8;
  for (int64_t i0 = 0; i0 < L; i0 += kTile) {
    const int64_t m = std::min(kTile, L - i0);
    const float* rows[kTile];
    for (int64_t i = 0; i < m; ++i) rows[i] = row(i0 + i);
    for (int64_t d = 0; d < n; ++d)
      for (int64_t i = 0; i < m; ++i) out[d * ld + i0 + i] = map(rows[i][d]);
  }
}

// Rows to bring into L2 while a long kernel runs, a share of their cache lines at a
// time: prefetches issued in one burst before the kernel mostly came too late or were
// dropped (measured on the recurrence's input rows, whose heads lie a token's width
// apart). Kernels issue them between row loops: a call inside a loop that carries
// accumulators made the compiler keep them in memory.
struct RowPrefetch {
  static constexpr int kMaxRows = 6 * kBlockTokens;
  static constexpr int64_t kLineFloats = 16;
  const float* rows[kMaxRows];
  int64_t lengths[kMaxRows];
  int count = 0, row = 0;
  int64_t offset = 0, lines = 0;
  void add(const float* p, int64_t floats) {
    if (count == kMaxRows) return;
    rows[count] = p;
    lengths[count++] = floats;
    lines += (floats + kLineFloats - 1) / kLineFloats;
  }
  // Issues 1/parts of all the lines (rounded up), where the kernel has `parts` places.
  void issue_share(int64_t parts) {
    for (int64_t n = (lines + parts - 1) / parts; n > 0 && row < count; --n) {
      __builtin_prefetch(rows[row] + offset, 0, 2);
      offset += kLineFloats;
      if (offset >= lengths[row]) {
        ++row;
        offset = 0;
      }
    }
  }
};

// C[M, N] (+)= A[M, K] · B[K, N], row-major with leading dimensions in elements.
// lower_triangular: A is lower triangular (A[m, k] = 0 for k > m), so row m only reads
// k <= m. N % kChunkAlign == 0.
void chunk_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                int64_t ldc, bool accumulate, bool lower_triangular = false);
// C[m, n] = A[m, :] · B[:, n] for the causal part n <= m only (scores of a chunk's
// queries against its own keys). Entries above the diagonal are left unspecified: some
// are computed (to the end of the diagonal's vector), the rest left as they were.
void chunk_gemm_causal(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                       float* C, int64_t ldc);

// out[i] = x[i] * exp(a[i] - b[i]) (element-wise decays between two log-gate vectors).
void mul_exp_diff(const float* x, const float* a, const float* b, float* out, int64_t n);
// out[i] = x[i] * exp(c - b[i]) (one reference log-gate against a row of them).
void mul_exp_diff_scalar(const float* x, float c, const float* b, float* out, int64_t n);
// out[j] = sum_c q[c] K[j, c] prod_{m=j+1..i} A[m, c] for j = i, i-1, ..., s: one row of
// a vector-gated diagonal block, with the decays between tokens as running products of
// the per-token decays A (rows of n; multiplied, never divided). scratch: n floats.
void decayed_dots_backward(const float* q, const float* K, const float* A, int64_t n, int64_t s, int64_t i, float* out,
                           float* scratch);

// One token of S = diag(decay) S + k v^T, then o = S^T q, for S [dk, N] row-major
// (ld = N). decay is per row of S (dk values). N % kChunkAlign == 0.
void linear_attention_step(float* S, int64_t dk, int64_t N, const float* decay, const float* k, const float* v,
                           const float* q, float* o);
// kBlockTokens tokens of that recurrence in one pass over S: with, per row of S, D the
// block's whole decay, kd_i = k_i times the decay of the tokens after i, qd_j = q_j times
// the decay of tokens 0..j (kd, qd: kBlockTokens rows of dk), and scores[j, i] (i <= j,
// row-major kBlockTokens x kBlockTokens) = q_j . (k_i times the decay of tokens i+1..j):
//   o_j = S^T qd_j + sum_{i<=j} scores[j, i] v_i,   S = diag(D) S + sum_i kd_i v_i^T,
// with S^T qd_j read before the update. A token then costs 2 + 1/kBlockTokens vector
// operations per state element instead of the single step's 3, and S streams through
// the cache once per block. v, o: kBlockTokens rows of N. N % kChunkAlign == 0.
// ahead: rows the kernel asks for while it runs (the next blocks' inputs).
// linear_attention_block_factors computes D, kd, qd and scores from the block's decays
// (kBlockTokens rows of dk) and its q rows (times q_scale) and k rows.
void linear_attention_block_factors(const float* decay, const float* const* q, float q_scale, const float* const* k,
                                    int64_t dk, float* D, float* kd, float* qd, float* scores);
void linear_attention_block_step(float* S, int64_t dk, int64_t N, const float* D, const float* kd, const float* qd,
                                 const float* scores, const float* const* v, float* const* o, RowPrefetch& ahead);
// One token of the gated delta rule for S [dk, N]: S = a S; u = S^T k;
// S += k (beta (v - u))^T; o = S^T q. N % kChunkAlign == 0.
void delta_rule_step(float* S, int64_t dk, int64_t N, float a, float beta, const float* k, const float* v,
                     const float* q, float* o);
// kBlockTokens tokens of delta_rule_step in two passes over S [dk, N] (ld = N). With the
// block's keys k and queries q (kBlockTokens rows of dk, row stride ld_rows), per token
// beta, and scalar decay products: cp[j] = a_0 .. a_j, cu[j, i] (i < j) = a_{i+1} .. a_j
// times k_i . k_j, co[j, i] (i <= j) = a_{i+1} .. a_j times k_i . q_j (row-major
// kBlockTokens x kBlockTokens), kd_i = k_i times a_{i+1} .. a_last and D = cp[last]:
//   d_j = beta_j (v_j - cp[j] S^T k_j - sum_{i<j} cu[j, i] d_i),
//   o_j = cp[j] S^T q_j + sum_{i<=j} co[j, i] d_i,   S = D S + sum_i kd_i d_i^T,
// 3 + 1/kBlockTokens vector operations per state element and token instead of the single
// step's 4.
void delta_block_step(float* S, int64_t dk, int64_t N, const float* k, const float* q, int64_t ld_rows,
                      const float* kd, float D, const float* cp, const float* cu, const float* co, const float* beta,
                      const float* const* v, float* const* o, RowPrefetch& ahead);
// One token of the generalized (DPLR) delta rule for S [dk, N]: u = S^T a;
// S = diag(w) S + b u^T + k v^T; o = S^T q. N % kChunkAlign == 0.
void dplr_step(float* S, int64_t dk, int64_t N, const float* w, const float* a, const float* b, const float* k,
               const float* v, const float* q, float* o);
// kBlockTokens tokens of dplr_step in two passes over S [dk, N] (ld = N). With P_j the
// product of the decays of tokens 0..j (P_{-1} = 1) and R_i that of tokens i+1.. of the
// block, the factors (kBlockTokens rows of ldf floats each) are ad_j = P_{j-1} a_j,
// qd_j = P_j q_j, bd_i = R_i b_i, kd_i = R_i k_i, and D = P of the whole block (dk);
// the intra-block scores (row-major kBlockTokens x kBlockTokens) are ab[j, i], ak[j, i]
// (i < j: a_j against b_i, k_i decayed from i to j - 1) and qb[j, i], qk[j, i] (i <= j:
// q_j against them decayed from i to j). Then
//   u_j = S^T ad_j + sum_{i<j} (ab[j, i] u_i + ak[j, i] v_i),
//   o_j = S^T qd_j + sum_{i<=j} (qb[j, i] u_i + qk[j, i] v_i),
//   S = diag(D) S + sum_i (bd_i u_i^T + kd_i v_i^T),
// 4 + 1/kBlockTokens vector operations per state element and token instead of the single
// step's 5.
void dplr_block_step(float* S, int64_t dk, int64_t N, int64_t ldf, const float* D, const float* ad, const float* qd,
                     const float* bd, const float* kd, const float* ab, const float* ak, const float* qb,
                     const float* qk, const float* const* v, float* const* o, RowPrefetch& ahead);
// The block's rows for dplr_block_step, read once from the caller's rows (kBlockTokens
// pointers each, dk floats): Q = q_scale q, K, A, Bk and W = exp(log_w) packed to rows of
// ldf (ldf % kChunkAlign == 0; the padding past dk is left as it is), and the factors
// D, ad, qd. Returns whether every log-decay was <= 0 (none NaN).
bool dplr_block_pack(const float* const* q, float q_scale, const float* const* k, const float* const* a,
                     const float* const* b, const float* const* log_w, int64_t dk, int64_t ldf, float* Q, float* K,
                     float* A, float* Bk, float* W, float* D, float* ad, float* qd);
// The intra-block scores of dplr_block_step from the packed rows (ldf apart, zero past
// dk), all of a block at once, and the factors bd, kd (the last token's scores decay b
// and k by them).
void dplr_block_scores(const float* Q, const float* A, const float* K, const float* Bk, const float* W, int64_t ldf,
                       float* ab, float* ak, float* qb, float* qk, float* bd, float* kd);
// One row of a diagonal block of the chunked DPLR delta rule: with the running product
// e_j = prod_{m=j+1..i} W[m] (rows of n), for j = i, i-1, ..., s:
//   qk[j] = <q, e_j K[j]>,  qb[j] = <q, e_j Bk[j]>,
// and, when a_next is given (the next row's a, whose decays stop one token earlier),
//   ak[j] = <a_next, e_j K[j]>,  ab[j] = <a_next, e_j Bk[j]>.
// n % kChunkAlign == 0; e: n floats of scratch.
void dplr_decayed_dots(const float* q, const float* a_next, const float* K, const float* Bk, const float* W, int64_t n,
                       int64_t s, int64_t i, float* qk, float* qb, float* ak, float* ab, float* e);

}  // namespace subq::ops
