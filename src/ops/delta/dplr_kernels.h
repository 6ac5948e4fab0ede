// Internal SIMD kernels of the generalized (DPLR) delta rule. Single-threaded; callers
// parallelise over batch x heads. Row lengths n and N must be multiples of kChunkAlign
// (callers zero-pad their workspaces).
#pragma once

#include <cstdint>

namespace subq::ops {

// One token for S [dk, N] row-major: u = S^T a; S = diag(w) S + b u^T + k v^T; o = S^T q.
void dplr_step(float* S, int64_t dk, int64_t N, const float* w, const float* a, const float* b, const float* k,
               const float* v, const float* q, float* o);

// The vector-decayed products of one row of a diagonal block. With the decay between
// tokens j and i the running product e_j = prod_{m=j+1..i} W[m] (rows of n; multiplied,
// never divided), for j = i, i-1, ..., s:
//   qk[j] = <q, e_j K[j]>,  qb[j] = <q, e_j Bk[j]>,
// and, when a_next is given (the next row's a, whose decays stop one token earlier),
//   ak[j] = <a_next, e_j K[j]>,  ab[j] = <a_next, e_j Bk[j]>.
// e: n floats of scratch.
void dplr_decayed_dots(const float* q, const float* a_next, const float* K, const float* Bk, const float* W, int64_t n,
                       int64_t s, int64_t i, float* qk, float* qb, float* ak, float* ab, float* e);

}  // namespace subq::ops
