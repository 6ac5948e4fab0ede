// The generalized (DPLR) delta rule, token by token, with the state in registers.
//
// Per token and head the recurrence does about 5 dk dv multiply-adds (u = S^T a, the
// update, o = S^T q) on CUDA cores, bound by its sequential dependence through S, which
// parallelism over batch, heads and state columns hides only once the grid fills the GPU.
// A chunked form does as many FLOPs at dk = 64 but most of them on tensor cores; fla's
// chunk_rwkv7 is one, and this kernel runs 1.4-1.6x faster than it on an H100 once
// producer warps feed it (docs/benchmarks.md), so it serves prefill as well as decode.
//
// One CTA takes W state columns of one (batch, head). P = dk / R threads share each group
// of C columns: thread (g, p) holds columns C g .. C g + C - 1 and the R rows
// 4 P j + 4 p + {0..3} (j < R / 4) of S in f32 registers, and P consecutive lanes read P
// consecutive float4s of a token's row vectors, free of bank conflicts. u_c = sum_i a_i
// S_ic, which the next token's update needs, ends in log2(P) warp shuffles per token;
// o_c = sum_i q_i S_ic, which nothing in the recurrence waits for, is summed over the
// group once per block of tokens, all its values in one butterfly
// (group_reduce_scatter). Three shapes (launch()): where the grid fills the GPU, W = 32,
// C = 2 and R = 8, so each float4 read feeds 8 state elements (the shared-memory pipe
// delivers a quarter of the FMA pipe's operands per cycle); on smaller grids R = 4, twice
// the warps and half the sequential work per thread and token; on grids of one sequence,
// W = 16 and C = 1 besides, twice the CTAs.
//
// Four producer warps beside the recurrence's warps feed it: they copy blocks of TK
// tokens through cp.async into two raw staging buffers, two blocks ahead, and convert each
// block once to f32 (q times scale, w = exp(log_w)) into one of two converted buffers, so
// that the recurrence's threads do only shared-memory reads, FMAs and shuffles and never
// wait at a CTA-wide barrier. The converted buffers pass between the roles through
// mbarriers: "full" once every producer thread has written its share, "empty" once every
// recurrence thread has read its last token of the block. TK = 8 where the grid fills the
// GPU (the buffers' shared memory then limits CTAs per SM), 16 on smaller grids (half the
// handoffs per token).
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/core/cuda/lane_sums.cuh"
#include "src/core/cuda/mma.cuh"
#include "src/core/cuda/tma.cuh"
#include "src/ops/delta/generalized_delta_rule_cuda.h"

namespace subq::cuda {
namespace {

using bf16_t = __nv_bfloat16;

constexpr int kProducers = 128;  // threads that stage and convert token blocks

template <int DK, int W, int C, int R>
constexpr int threads_for() {  // the recurrence's threads
  return W / C * (DK / R);
}

struct Params {
  const bf16_t* q;
  const bf16_t* k;
  const bf16_t* a;
  const bf16_t* b;
  const bf16_t* v;
  const float* log_w;
  float* state;
  void* o;
  int T, H, dv;
  float scale;
};

// Shared memory, per block of TK tokens, two buffers of each: raw, q, k, a, b rows then the
// CTA's W columns of v in bf16, and log_w in f32; converted, q * scale, k, a, b, w, v in
// f32; then the full and empty mbarriers of the two converted buffers.
template <int DK, int W, int TK>
struct Layout {
  static constexpr int kRawRow = 4 * DK + W;  // bf16 elements per token
  static constexpr int kRow = 5 * DK + W;     // f32 elements per token
  static constexpr int kRawBytes = TK * kRawRow * 2;
  static constexpr int kStageBytes = kRawBytes + TK * DK * 4;
  static constexpr int kRowsBytes = TK * kRow * 4;
  static constexpr int kBarrierOffset = 2 * kStageBytes + 2 * kRowsBytes;
  static constexpr int kBytes = kBarrierOffset + 4 * 8;
  // 16-byte pieces per token: eight bf16 of a raw row, four f32 of log_w.
  static constexpr int kRawChunks = kRawRow / 8, kChunks = kRawChunks + DK / 4;
};

// Issues producer thread `tid`'s copies of token block n (tokens past T and columns past
// dv are zero-filled, reading nothing). row0: the [B, T, H, .] row of this CTA's token 0,
// (b T) H + h.
template <int DK, int W, int TK>
__device__ __forceinline__ void stage_block(const Params& p, unsigned char* stage, int64_t row0, int col0, int n,
                                            int tid) {
  using L = Layout<DK, W, TK>;
  auto* raw = reinterpret_cast<bf16_t*>(stage);
  auto* logw = reinterpret_cast<float*>(stage + L::kRawBytes);
  // One flat loop over (token, piece): a loop per token would leave most threads idle
  // (a token has about 3 pieces per 8 threads) and cost each of them the loop control.
  for (int i = tid; i < TK * L::kChunks; i += kProducers) {
    const int tok = i / L::kChunks, c = i % L::kChunks;
    const int t = n * TK + tok;
    const bool valid = t < p.T;
    const int64_t row = valid ? row0 + static_cast<int64_t>(t) * p.H : 0;
    if (c < L::kRawChunks) {
      const int e = 8 * c, which = e / DK;  // q, k, a, b, then v
      if (which < 4) {
        const bf16_t* src = which == 0 ? p.q : which == 1 ? p.k : which == 2 ? p.a : p.b;
        cp_async_16(raw + tok * L::kRawRow + e, src + row * DK + e % DK, valid);
      } else {
        const int col = col0 + e - 4 * DK;
        const bool in = valid && col < p.dv;
        cp_async_16(raw + tok * L::kRawRow + e, p.v + (in ? row * p.dv + col : 0), in);
      }
    } else {
      const int e = 4 * (c - L::kRawChunks);
      cp_async_16(logw + tok * DK + e, p.log_w + row * DK + e, valid);
    }
  }
}

__device__ __forceinline__ float bf16_low(uint32_t x) { return __uint_as_float(x << 16); }
__device__ __forceinline__ float bf16_high(uint32_t x) { return __uint_as_float(x & 0xffff0000u); }

template <int DK, int W, int TK>
__device__ __forceinline__ void convert_block(const Params& p, const unsigned char* stage, float* rows, int tid) {
  using L = Layout<DK, W, TK>;
  const auto* raw = reinterpret_cast<const bf16_t*>(stage);
  const auto* logw = reinterpret_cast<const float*>(stage + L::kRawBytes);
  for (int i = tid; i < TK * L::kChunks; i += kProducers) {
    const int tok = i / L::kChunks, c = i % L::kChunks;
    float* row = rows + tok * L::kRow;
    if (c < L::kRawChunks) {
      const int e = 8 * c;
      const uint4 x = *reinterpret_cast<const uint4*>(raw + tok * L::kRawRow + e);
      const float f = e < DK ? p.scale : 1.f;
      // q, k, a, b keep their offsets; v moves past w (at 4 dk) to 5 dk.
      float* dst = row + (e < 4 * DK ? e : e + DK);
      *reinterpret_cast<float4*>(dst) =
          make_float4(f * bf16_low(x.x), f * bf16_high(x.x), f * bf16_low(x.y), f * bf16_high(x.y));
      *reinterpret_cast<float4*>(dst + 4) =
          make_float4(f * bf16_low(x.z), f * bf16_high(x.z), f * bf16_low(x.w), f * bf16_high(x.w));
    } else {
      const int e = 4 * (c - L::kRawChunks);
      const float4 lw = *reinterpret_cast<const float4*>(logw + tok * DK + e);
      *reinterpret_cast<float4*>(row + 4 * DK + e) =
          make_float4(__expf(lw.x), __expf(lw.y), __expf(lw.z), __expf(lw.w));
    }
  }
}

// Loads the 4 consecutive floats at p, one 16-byte read.
__device__ __forceinline__ void load_rows(const float* p, float (&x)[4]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  x[0] = t.x, x[1] = t.y, x[2] = t.z, x[3] = t.w;
}

// One token: u = S^T a, S = diag(w) S + b u^T + k v^T, and this thread's share of
// o = S^T q over its rows and columns (r: the token's converted row vectors); the caller
// sums o over the group, a block of tokens at a time, off the recurrence's critical path.
template <int DK, int R, int C>
__device__ __forceinline__ void token_step(float (&S)[R / 4][4][C], const float* r, int part, int c0,
                                           float (&o)[C]) {
  constexpr int V = 4, J = R / V, P = DK / R;
  // Two accumulators per column (even and odd j) halve the dependent FMA chains.
  float u2[2][C] = {};
#pragma unroll
  for (int j = 0; j < J; ++j) {
    float av[V];
    load_rows(r + 2 * DK + V * P * j + V * part, av);
#pragma unroll
    for (int e = 0; e < V; ++e)
#pragma unroll
      for (int c = 0; c < C; ++c) u2[j & 1][c] = fmaf(av[e], S[j][e][c], u2[j & 1][c]);
  }
  float u[C], v[C];
#pragma unroll
  for (int c = 0; c < C; ++c) {
    u[c] = group_sum<P>(u2[0][c] + u2[1][c]);
    v[c] = r[5 * DK + c0 + c];
  }
  float o2[2][C] = {};
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int i = V * P * j + V * part;
    float qv[V], kv[V], bv[V], wv[V];
    load_rows(r + i, qv);
    load_rows(r + DK + i, kv);
    load_rows(r + 3 * DK + i, bv);
    load_rows(r + 4 * DK + i, wv);
#pragma unroll
    for (int e = 0; e < V; ++e)
#pragma unroll
      for (int c = 0; c < C; ++c) {
        S[j][e][c] = fmaf(wv[e], S[j][e][c], fmaf(bv[e], u[c], kv[e] * v[c]));
        o2[j & 1][c] = fmaf(qv[e], S[j][e][c], o2[j & 1][c]);
      }
  }
#pragma unroll
  for (int c = 0; c < C; ++c) o[c] = o2[0][c] + o2[1][c];
}

template <bool kF32Out>
__device__ __forceinline__ void store_output(void* out, int64_t at, float o) {
  if constexpr (kF32Out) static_cast<float*>(out)[at] = o;
  else static_cast<bf16_t*>(out)[at] = __float2bfloat16(o);
}

template <int DK, int W, int C, int R, int TK, bool kF32Out>
__global__ void __launch_bounds__(threads_for<DK, W, C, R>() + kProducers) dplr_recurrent_kernel(Params p) {
  using L = Layout<DK, W, TK>;
  constexpr int kThreads = threads_for<DK, W, C, R>();
  constexpr int V = 4, P = DK / R, J = R / V;
  extern __shared__ __align__(16) unsigned char smem[];
  const auto stage = [&](int n) { return smem + (n & 1) * L::kStageBytes; };
  const auto rows = [&](int n) {
    return reinterpret_cast<float*>(smem + 2 * L::kStageBytes + (n & 1) * L::kRowsBytes);
  };
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kBarrierOffset);
  uint64_t* empty = full + 2;
  if (threadIdx.x == 0) {
    for (int i = 0; i < 2; ++i) {
      mbar_init(&full[i], kProducers);
      mbar_init(&empty[i], kThreads);
    }
  }
  __syncthreads();  // the roles part here and never meet at a CTA-wide barrier again

  const int h = blockIdx.y, b = blockIdx.z;
  const int col0 = blockIdx.x * W;
  const int64_t row0 = static_cast<int64_t>(b) * p.T * p.H + h;
  const int blocks = (p.T + TK - 1) / TK;

  if (threadIdx.x >= kThreads) {
    // Producers: block n + 2's copies go out once block n is converted; a named barrier
    // among the producers orders each block's copies (all landed before any thread
    // converts) and conversion (all done before the raw buffer is refilled).
    constexpr int kProducersReady = 1;
    const int tid = threadIdx.x - kThreads;
    stage_block<DK, W, TK>(p, stage(0), row0, col0, 0, tid);
    cp_async_commit();
    if (blocks > 1) stage_block<DK, W, TK>(p, stage(1), row0, col0, 1, tid);
    cp_async_commit();
    for (int n = 0; n < blocks; ++n) {
      cp_async_wait<1>();
      named_barrier_sync(kProducersReady, kProducers);
      mbar_wait(&empty[n & 1], ((n >> 1) & 1) ^ 1);  // block n - 2 read by every recurrence thread
      convert_block<DK, W, TK>(p, stage(n), rows(n), tid);
      mbar_arrive(&full[n & 1]);
      named_barrier_sync(kProducersReady, kProducers);
      if (n + 2 < blocks) stage_block<DK, W, TK>(p, stage(n), row0, col0, n + 2, tid);
      cp_async_commit();  // possibly empty: keeps one group per block for the wait above
    }
    return;
  }

  const int part = threadIdx.x % P, c0 = C * (threadIdx.x / P);  // c0: first column within the CTA's
  const bool owns = col0 + c0 < p.dv;  // dv is a multiple of 8: a group of C <= 2 is in or out
  float* state = p.state + (static_cast<int64_t>(b) * p.H + h) * DK * p.dv + col0 + c0;

  float S[J][V][C];
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int e = 0; e < V; ++e)
#pragma unroll
      for (int c = 0; c < C; ++c)
        S[j][e][c] = owns ? state[static_cast<int64_t>(V * P * j + V * part + e) * p.dv + c] : 0.f;

  for (int n = 0; n < blocks; ++n) {
    mbar_wait(&full[n & 1], (n >> 1) & 1);
    const float* r = rows(n);
    const int count = min(TK, p.T - n * TK);
    const int64_t at0 = (row0 + static_cast<int64_t>(n) * TK * p.H) * p.dv + col0 + c0;
    const int64_t step = static_cast<int64_t>(p.H) * p.dv;
    // o[C tok + c]: token tok's column c0 + c, this thread's rows, then the group's sum.
    float o[TK * C];
#pragma unroll
    for (int tok = 0; tok < TK; ++tok) {
      float ot[C] = {};
      if (tok < count) token_step<DK, R, C>(S, r + tok * L::kRow, part, c0, ot);
#pragma unroll
      for (int c = 0; c < C; ++c) o[C * tok + c] = ot[c];
    }
    mbar_arrive(&empty[n & 1]);
    constexpr int M = TK * C, kKept = kept<M, P>(), kSpread = spread<M, P>();
    group_reduce_scatter<P / 2, M>(o, part);
#pragma unroll
    for (int i = 0; i < kKept; ++i) {
      const int value = kKept * (part / kSpread) + i, tok = value / C, c = value % C;
      if (owns && part % kSpread == 0 && tok < count) store_output<kF32Out>(p.o, at0 + tok * step + c, o[i]);
    }
  }

  if (!owns) return;
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int e = 0; e < V; ++e)
#pragma unroll
      for (int c = 0; c < C; ++c) state[static_cast<int64_t>(V * P * j + V * part + e) * p.dv + c] = S[j][e][c];
}

template <int DK, int W, int C, int R, int TK>
void launch(const Params& p, int B, bool f32_out) {
  constexpr int kBytes = Layout<DK, W, TK>::kBytes, kThreads = threads_for<DK, W, C, R>() + kProducers;
  static_assert(DK / R <= 32, "a column's rows must lie in one warp");
  static_assert(R % 4 == 0, "rows come in float4 groups");
  const auto kernel =
      f32_out ? dplr_recurrent_kernel<DK, W, C, R, TK, true> : dplr_recurrent_kernel<DK, W, C, R, TK, false>;
  if constexpr (kBytes > 48 * 1024) {
    static const bool configured = [] {
      for (const auto k : {dplr_recurrent_kernel<DK, W, C, R, TK, true>, dplr_recurrent_kernel<DK, W, C, R, TK, false>})
        SUBQ_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes));
      return true;
    }();
    (void)configured;
  }
  const dim3 grid((p.dv + W - 1) / W, p.H, B);
  kernel<<<grid, kThreads, kBytes, stream()>>>(p);
  SUBQ_CUDA_CHECK_LAUNCH("dplr_recurrent_kernel");
}

// 32 columns per CTA, 2 per thread, 8 rows per thread in blocks of 8 tokens once that
// gives two CTAs per multiprocessor; else 4 rows (twice the warps for the same columns)
// in blocks of 16; and where even twice as many CTAs fit one per multiprocessor (one
// sequence), 16 columns of 1 per thread.
template <int DK>
void launch(const Params& p, int B, bool f32_out) {
  const int64_t wide_ctas = static_cast<int64_t>(p.dv + 31) / 32 * p.H * B;
  const int64_t sms = device_info().multiprocessors;
  if (wide_ctas >= 2 * sms) launch<DK, 32, 2, 8, 8>(p, B, f32_out);
  else if (2 * wide_ctas > sms) launch<DK, 32, 2, 4, 16>(p, B, f32_out);
  else launch<DK, 16, 1, 4, 16>(p, B, f32_out);
}

void check_gpu_tensor(const Tensor& t, DType dtype, const Shape& shape, const char* what) {
  if (!t.defined()) throw Error(std::string(what) + ": expected a tensor, found none");
  check_device(t, Device::cuda, what);
  check_dtype(t, dtype, what);
  check_contiguous(t, what);
  check_shape(t, shape, what);
}

}  // namespace

void generalized_delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& a, const Tensor& b,
                            const Tensor& log_w, const Tensor& state, const Tensor& o,
                            const ops::GeneralizedDeltaRuleOptions& options) {
  if (!q.defined() || q.ndim() != 4)
    throw Error("generalized_delta_rule q: expected 4 dimensions [B, T, H, dk], found " +
                (q.defined() ? q.str() : std::string("none")));
  if (!v.defined() || v.ndim() != 4)
    throw Error("generalized_delta_rule v: expected 4 dimensions [B, T, H, dv], found " +
                (v.defined() ? v.str() : std::string("none")));
  const int64_t B = q.dim(0), T = q.dim(1), H = q.dim(2), dk = q.dim(3), dv = v.dim(3);
  if (dk != 64 && dk != 128)
    throw Error("generalized_delta_rule q: key dim dk must be 64 or 128, found " + q.str());
  if (dv < 8 || dv % 8 != 0)
    throw Error("generalized_delta_rule v: value dim dv must be a positive multiple of 8, found " + v.str());
  if (T < 1) throw Error("generalized_delta_rule q: expected T >= 1, found " + q.str());
  const Shape keys{B, T, H, dk};
  check_gpu_tensor(q, DType::bf16, keys, "generalized_delta_rule q");
  check_gpu_tensor(k, DType::bf16, keys, "generalized_delta_rule k");
  check_gpu_tensor(a, DType::bf16, keys, "generalized_delta_rule a");
  check_gpu_tensor(b, DType::bf16, keys, "generalized_delta_rule b");
  check_gpu_tensor(v, DType::bf16, Shape{B, T, H, dv}, "generalized_delta_rule v");
  check_gpu_tensor(log_w, DType::f32, keys, "generalized_delta_rule log_w");
  check_gpu_tensor(state, DType::f32, Shape{B, H, dk, dv}, "generalized_delta_rule state");
  if (!o.defined()) throw Error("generalized_delta_rule o: expected a tensor, found none");
  if (o.dtype() != DType::f32 && o.dtype() != DType::bf16)
    throw Error("generalized_delta_rule o: expected dtype bf16 or f32, found " + o.str());
  check_gpu_tensor(o, o.dtype(), Shape{B, T, H, dv}, "generalized_delta_rule o");
  if (!std::isfinite(options.scale))
    throw Error("generalized_delta_rule: options.scale must be finite, found " + std::to_string(options.scale));
  // T plus the largest token block (16) stays an int.
  if (B > 65535 || H > 65535 || T > (int64_t{1} << 31) - 16)
    throw Error("generalized_delta_rule: sizes exceed the kernel's grid limits: q " + q.str());
  if (B == 0 || H == 0) return;

  Params p{};
  p.q = reinterpret_cast<const bf16_t*>(q.device_data<bf16>());
  p.k = reinterpret_cast<const bf16_t*>(k.device_data<bf16>());
  p.a = reinterpret_cast<const bf16_t*>(a.device_data<bf16>());
  p.b = reinterpret_cast<const bf16_t*>(b.device_data<bf16>());
  p.v = reinterpret_cast<const bf16_t*>(v.device_data<bf16>());
  p.log_w = log_w.device_data<float>();
  p.state = state.mutable_device_data<float>();
  p.o = o.dtype() == DType::f32 ? static_cast<void*>(o.mutable_device_data<float>())
                                : static_cast<void*>(o.mutable_device_data<bf16>());
  p.T = static_cast<int>(T);
  p.H = static_cast<int>(H);
  p.dv = static_cast<int>(dv);
  p.scale = options.scale;
  const bool f32_out = o.dtype() == DType::f32;
  if (dk == 64) launch<64>(p, static_cast<int>(B), f32_out);
  else launch<128>(p, static_cast<int>(B), f32_out);
}

}  // namespace subq::cuda
