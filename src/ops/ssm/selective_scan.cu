// Selective scan, parallel over (batch, channel, state slice) lanes and over time chunks.
//
// L adjacent lanes share a channel, each holding SPL of its N states in registers (L a
// power of two up to 32, SPL = 1, 2, 4 or 8, L SPL >= N, the states past N zero); a block
// of kThreads lanes owns kThreads / L channels. Time runs through shared memory in tiles
// of `tile` tokens, loaded by cp.async one tile ahead: the x, dt and z rows of the
// block's channels and the B and C rows of the groups they read. Per tile the block
//   1. turns dt into softplus(dt + bias), u = dt x and z into silu(z), once per element
//      (not once per lane: these cost special-function ops too),
//   2. scans: per step a lane spends SPL exp2 and FMAs, and the L lanes of a channel sum
//      sum_n C h with shuffles, L steps at a time (one at L = 32),
//   3. writes y = (sum_n C h + D x) silu(z) with coalesced stores.
// The split: one lane of N states for N <= 2, else the fewest lanes of four states that
// hold N, and 32 lanes of eight past N = 128. At N = 16 (four lanes of four states) the
// scan runs about 8 instructions per exp2 on an H200 (Nsight Compute), short of the
// special-function rate, and waits on latency with under three resident warps per
// scheduler at batch 8 x 1536 channels. Other splits measured there (bench/cuda scan
// shapes): two lanes of eight states (half the warps) 1.35x slower once batch fills the
// grid; eight lanes of two and sixteen of one (twice and four times the warps, but each
// lane-step still loads its dt, u, B and C and shuffles: 1.3x and 2x the scan loop's
// instructions by the SASS) 0.90-0.98x and 0.63-0.71x as fast.
//
// When batch x channel blocks cannot fill the GPU, time is cut into chunks, three passes:
//   a. each chunk's end state from a zero start and its sum of dt (the kernel without
//      outputs),
//   b. a short sequential pass over chunks turns these into each chunk's start state,
//   c. each chunk rescans from its true start state and writes y.
// Passes a and c both spend the exps, so chunking doubles the work: it is used only where
// the grid alone would leave most of the GPU idle.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/core/cuda/lane_sums.cuh"
#include "src/core/cuda/mma.cuh"
#include "src/ops/ssm/selective_scan_cuda.h"

namespace subq::cuda {
namespace {

constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
// Shared memory per block that bounds the tile length (below the 48 KB that needs no
// opt-in; at N = 16 and G = 1 four lanes of four states take 32-token tiles, 36 KB, 6
// blocks per SM).
constexpr int kSmemBudget = 48 * 1024;

struct Params {
  const float *x, *dt, *A, *B, *C, *Dskip, *z, *dt_bias;
  float* y;
  float* state;        // [batch, D, N]
  float* chunk_end;    // [batch, chunks, D, N]: end state of each chunk from a zero start
  float* chunk_start;  // [batch, chunks, D, N]: true start state of each chunk
  float* chunk_dtsum;  // [batch, chunks, D]
  int T, D, N, G, chunk_len, chunks;
  int tile;              // tokens per shared-memory tile
  int groups_per_block;  // B and C groups a block's channels can span
  bool softplus;
};

// Floats of shared memory: two stages of x, dt, z tiles [tile][channels] and B, C tiles
// [tile][groups][padded N], then u [tile][channels].
struct TileLayout {
  int channels, states, tile, groups;
  __host__ __device__ int xdz() const { return tile * channels; }
  __host__ __device__ int bc() const { return tile * groups * states; }
  __host__ __device__ int stage() const { return 3 * xdz() + 2 * bc(); }
  __host__ __device__ int floats() const { return 2 * stage() + xdz(); }
};

// softplus(v) = max(v, 0) + log1p(w), w = exp(-|v|) in (0, 1], with log1p(w) =
// 2 atanh(s), s = w / (2 + w) <= 1/3, as its odd series to s^15 (next term below 2^-26
// relative): a few ulp like log1pf, at a third of its instructions and without its
// branches. (w below 2^-126 flushes to 0: softplus is then max(v, 0), off by < 2^-126.)
__device__ __forceinline__ float softplus(float v) {
  const float w = fast_exp2(-fabsf(v) * kLog2e);
  const float s = __fdividef(w, 2.f + w), s2 = s * s;
  float p = 1.f / 15;
  p = fmaf(p, s2, 1.f / 13);
  p = fmaf(p, s2, 1.f / 11);
  p = fmaf(p, s2, 1.f / 9);
  p = fmaf(p, s2, 1.f / 7);
  p = fmaf(p, s2, 1.f / 5);
  p = fmaf(p, s2, 1.f / 3);
  p = fmaf(p, s2, 1.f);
  return fmaf(2.f * s, p, fmaxf(v, 0.f));
}

__device__ __forceinline__ float effective_dt(bool softplus_dt, float raw, float bias) {
  const float v = raw + bias;
  return softplus_dt ? softplus(v) : v;
}

// SPL consecutive floats of shared memory in the widest load their alignment allows: a
// float, a float2, or float4s for SPL = 4 and 8 (the caller's offsets are multiples of
// min(SPL, 4) floats).
template <int SPL>
__device__ __forceinline__ void load_states(float (&v)[SPL], const float* s) {
  if constexpr (SPL == 1) {
    v[0] = *s;
  } else if constexpr (SPL == 2) {
    const float2 q = *reinterpret_cast<const float2*>(s);
    v[0] = q.x;
    v[1] = q.y;
  } else {
#pragma unroll
    for (int i = 0; i < SPL; i += 4) {
      const float4 q = *reinterpret_cast<const float4*>(s + i);
      v[i] = q.x;
      v[i + 1] = q.y;
      v[i + 2] = q.z;
      v[i + 3] = q.w;
    }
  }
}

// Steps scanned as one group: L, so that channel_sum spreads the group's L sums over the
// channel's L lanes; one step per group (a butterfly) at L = 32, whose 32 steps of B and C
// would not fit in registers.
constexpr int steps_per_group(int L) { return L <= 16 ? L : 1; }

// Sums y[r] over the L lanes of a channel. R == L: a reduce-scatter in log2(L) rounds of
// halving (L - 1 shuffles per lane for L steps); the lane ends with step `slice`'s sum in
// y[0] and returns slice. R == 1: a butterfly; lane 0 returns step 0, the others -1.
template <int L, int R>
__device__ __forceinline__ int channel_sum(float (&y)[R], int slice) {
  if constexpr (R == 1) {
    y[0] = group_sum<L>(y[0]);
    return slice == 0 ? 0 : -1;
  } else {
    static_assert(R == L);
    group_reduce_scatter<L / 2, L>(y, slice);
    return slice;
  }
}

// kOut: pass c (or the only pass), from the start state, writing y; otherwise pass a,
// from a zero start, writing the chunk's end state and sum of dt.
// kVec: D and N multiples of 4 and every row 16-byte aligned (then NP, a power of two
// >= N, is a multiple of 4 too). Every tile starts at a multiple of min(NP, 4) floats (x,
// dt, z rows hold CH >= 4, B and C rows NP) and a lane's B and C slices at multiples of
// SPL within it, as load_states needs.
template <int L, int SPL, bool kOut, bool kVec>
__global__ void __launch_bounds__(kThreads) scan_kernel(const Params p) {
  constexpr int CH = kThreads / L, NP = L * SPL, R = steps_per_group(L);
  static_assert((SPL == 1 || SPL == 2 || SPL == 4 || SPL == 8) && kThreads % CH == 0 && CH >= 4);
  static_assert(!kVec || NP % 4 == 0);
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const TileLayout lay{CH, NP, p.tile, p.groups_per_block};
  const int TT = lay.tile, ng = lay.groups;
  float* u = smem + 2 * lay.stage();
  const int c0 = blockIdx.x * CH, b = blockIdx.y, chunk = blockIdx.z;
  const int t0 = chunk * p.chunk_len, t1 = min(p.T, t0 + p.chunk_len);
  const int gs = p.D / p.G, g0 = c0 / gs;
  const int tid = threadIdx.x;

  // Element-wise role (steps 1 and 3): one channel per thread, as kThreads % CH == 0.
  const int ec = tid % CH;
  const bool ec_valid = c0 + ec < p.D;
  const float bias = p.dt_bias && ec_valid ? p.dt_bias[c0 + ec] : 0.f;

  // Scan role: channel lc of the block, states [slice * SPL, slice * SPL + SPL). Idle
  // channels past D scan zeros (they still join the shuffles) and write nothing.
  const int lc = tid / L, slice = tid % L;
  const bool lane_valid = c0 + lc < p.D;
  const int d = lane_valid ? c0 + lc : p.D - 1;
  const int gl = d / gs - g0;
  const float skip_l = p.Dskip ? p.Dskip[d] : 0.f;
  float a2[SPL], h[SPL];
  const float* h0 = p.chunks > 1 ? p.chunk_start + ((static_cast<int64_t>(b) * p.chunks + chunk) * p.D + d) * p.N
                                 : p.state + (static_cast<int64_t>(b) * p.D + d) * p.N;
#pragma unroll
  for (int i = 0; i < SPL; ++i) {
    const int n = slice * SPL + i;
    a2[i] = n < p.N ? p.A[static_cast<int64_t>(d) * p.N + n] * kLog2e : 0.f;
    h[i] = kOut && n < p.N ? h0[n] : 0.f;
  }
  float dtsum = 0.f;

  // Copies of V floats: 16 bytes where rows allow (kVec), else 4.
  constexpr int V = kVec ? 4 : 1;
  auto copy = [](float* dst, const float* src, bool ok) {
    if constexpr (kVec) cp_async_16(dst, src, ok);
    else cp_async_4(dst, src, ok);
  };
  auto issue = [&](int k) {
    float* s = smem + (k & 1) * lay.stage();
    const int tb = t0 + k * TT;
    const int64_t row0 = (static_cast<int64_t>(b) * p.T + tb) * p.D + c0;
    constexpr int kRowPieces = CH / V;
    for (int e = tid; e < TT * kRowPieces; e += kThreads) {
      const int t = e / kRowPieces, c = e % kRowPieces * V;
      const bool ok = tb + t < t1 && c0 + c < p.D;
      const int64_t at = ok ? row0 + static_cast<int64_t>(t) * p.D + c : 0;
      copy(s + t * CH + c, p.x + at, ok);
      copy(s + lay.xdz() + t * CH + c, p.dt + at, ok);
      if (kOut && p.z) copy(s + 2 * lay.xdz() + t * CH + c, p.z + at, ok);
    }
    float* bs = s + 3 * lay.xdz();
    const int64_t bc0 = (static_cast<int64_t>(b) * p.T + tb) * p.G;
    const int bc_pieces = ng * NP / V;
    for (int e = tid; e < TT * bc_pieces; e += kThreads) {
      const int t = e / bc_pieces, r = e % bc_pieces * V, g = g0 + r / NP, n = r % NP;
      const bool ok = tb + t < t1 && g < p.G && n < p.N;
      const int64_t at = ok ? (bc0 + static_cast<int64_t>(t) * p.G + g) * p.N + n : 0;
      copy(bs + t * ng * NP + r, p.B + at, ok);
      if (kOut) copy(bs + lay.bc() + t * ng * NP + r, p.C + at, ok);
    }
    cp_async_commit();
  };

  const int tiles = (t1 - t0 + TT - 1) / TT;
  issue(0);
  for (int k = 0; k < tiles; ++k) {
    cp_async_wait<0>();
    __syncthreads();  // tile k visible; every reader of tile k - 1's stage and of u done
    if (k + 1 < tiles) issue(k + 1);
    float* xs = smem + (k & 1) * lay.stage();
    float* dts = xs + lay.xdz();
    float* zs = dts + lay.xdz();
    const float* bs = zs + lay.xdz();
    const float* cs = bs + lay.bc();
    const int nt = min(TT, t1 - t0 - k * TT);

    // Steps run in groups of R; the group's padding steps get dt = 0 and u = 0, which
    // leave the state as it is.
    const int ntp = (nt + R - 1) / R * R;
    for (int e = tid; e < ntp * CH; e += kThreads) {
      const float dtv = e < nt * CH ? effective_dt(p.softplus, dts[e], bias) : 0.f;
      dts[e] = dtv;
      u[e] = dtv * xs[e];
      if (kOut && p.z) zs[e] = __fdividef(zs[e], 1.f + fast_exp2(-zs[e] * kLog2e));
    }
    __syncthreads();

    // A group's shared-memory reads all come first, so its exp2s need not wait on the
    // previous step's shuffles and stores.
    for (int t = 0; t < ntp; t += R) {
      float dtv[R], uv[R], bv[R][SPL];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        dtv[r] = dts[(t + r) * CH + lc];
        uv[r] = u[(t + r) * CH + lc];
        load_states<SPL>(bv[r], bs + ((t + r) * ng + gl) * NP + slice * SPL);
      }
      if constexpr (kOut) {
        float cv[R][SPL], yv[R];
#pragma unroll
        for (int r = 0; r < R; ++r) load_states<SPL>(cv[r], cs + ((t + r) * ng + gl) * NP + slice * SPL);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          yv[r] = 0.f;
#pragma unroll
          for (int i = 0; i < SPL; ++i) {
            h[i] = fmaf(fast_exp2(dtv[r] * a2[i]), h[i], uv[r] * bv[r][i]);
            yv[r] = fmaf(cv[r][i], h[i], yv[r]);
          }
        }
        // x[t] becomes sum_n C h + D x, written by the one lane that reads it here.
        const int step = channel_sum<L, R>(yv, slice);
        if (step >= 0) {
          float* out = xs + (t + step) * CH + lc;
          *out = fmaf(skip_l, *out, yv[0]);
        }
      } else {
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
          for (int i = 0; i < SPL; ++i) h[i] = fmaf(fast_exp2(dtv[r] * a2[i]), h[i], uv[r] * bv[r][i]);
          dtsum += dtv[r];
        }
      }
    }

    if constexpr (kOut) {
      __syncthreads();
      if (ec_valid) {
        float* y = p.y + (static_cast<int64_t>(b) * p.T + t0 + k * TT) * p.D + c0 + ec;
        for (int e = tid; e < nt * CH; e += kThreads) y[static_cast<int64_t>(e / CH) * p.D] = p.z ? xs[e] * zs[e] : xs[e];
      }
    }
  }

  if (!lane_valid) return;
  float* hs;
  if constexpr (kOut) {
    if (p.chunks > 1) return;
    hs = p.state + (static_cast<int64_t>(b) * p.D + d) * p.N;
  } else {
    const int64_t cd = (static_cast<int64_t>(b) * p.chunks + chunk) * p.D + d;
    if (slice == 0) p.chunk_dtsum[cd] = dtsum;
    hs = p.chunk_end + cd * p.N;
  }
#pragma unroll
  for (int i = 0; i < SPL; ++i)
    if (slice * SPL + i < p.N) hs[slice * SPL + i] = h[i];
}

// Pass b: one thread per (batch, channel, state) walks the chunks in order. Its loads do
// not depend on the carried state, so unrolled iterations keep several in flight.
__global__ void chunk_carry_kernel(const Params p, int batch) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(batch) * p.D * p.N) return;
  const int n = static_cast<int>(i % p.N);
  const int d = static_cast<int>(i / p.N % p.D);
  const int b = static_cast<int>(i / (static_cast<int64_t>(p.N) * p.D));
  const float* __restrict__ end = p.chunk_end;
  const float* __restrict__ dtsum = p.chunk_dtsum;
  float* __restrict__ start = p.chunk_start;
  const float a2 = p.A[static_cast<int64_t>(d) * p.N + n] * kLog2e;
  float h = p.state[i];
#pragma unroll 8
  for (int c = 0; c < p.chunks; ++c) {
    const int64_t cd = (static_cast<int64_t>(b) * p.chunks + c) * p.D + d;
    start[cd * p.N + n] = h;
    h = fmaf(fast_exp2(a2 * __ldg(dtsum + cd)), h, __ldg(end + cd * p.N + n));
  }
  p.state[i] = h;
}

// Tile length: 32 tokens, or the longest shorter one whose shared memory fits the budget,
// and at least one step group: past the budget only for many groups of wide states (at
// worst 16 tokens of N = 64 with a group per channel, 148 KB). Longer tiles cost resident
// blocks: on an H200 at N = 16 (four lanes of four states) a 64-token tile (73 KB, 3
// blocks per SM) ran 1.05x as fast at batch 8 x 1536 channels but 0.66x at 4 x 4096
// (1.3 waves), a 16-token tile 0.90-0.93x.
TileLayout pick_layout(int channels, int states, int group_steps, int D, int G) {
  const int gs = D / G;
  TileLayout lay{channels, states, 32, std::min(G, (channels - 1) / gs + 2)};
  while (lay.tile > group_steps && lay.floats() * 4 > kSmemBudget) lay.tile /= 2;
  return lay;
}

// Time chunks: none while batch x channel blocks fill a quarter of the resident blocks;
// otherwise as many as fill them all, none shorter than 64 steps. On an H200 (N = 16,
// 792 resident blocks) chunking 8 x 1536 channels (384 blocks) cost 0.91 instead of
// 0.65 ms, and not chunking 1 x 2048 channels (64 blocks) 1.00 instead of 0.32 ms.
template <int L, int SPL, bool kVec>
void launch(Params p, int batch) {
  constexpr int CH = kThreads / L;
  const TileLayout lay = pick_layout(CH, L * SPL, steps_per_group(L), p.D, p.G);
  p.tile = lay.tile;
  p.groups_per_block = lay.groups;
  const int smem = lay.floats() * 4;
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(scan_kernel<L, SPL, true, kVec>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  SUBQ_CUDA_CHECK(cudaFuncSetAttribute(scan_kernel<L, SPL, false, kVec>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int per_sm = 0;
  SUBQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, scan_kernel<L, SPL, true, kVec>, kThreads, smem));
  const int64_t resident = static_cast<int64_t>(std::max(1, per_sm)) * device_info().multiprocessors;
  const int64_t blocks_x = (p.D + CH - 1) / CH, base = blocks_x * batch;
  int64_t chunks = base * 4 >= resident ? 1 : std::clamp<int64_t>(resident / base, 1, std::max(1, p.T / 64));
  const int64_t chunk_len = (p.T + chunks - 1) / chunks;
  chunks = (p.T + chunk_len - 1) / chunk_len;
  p.chunk_len = static_cast<int>(chunk_len);
  p.chunks = static_cast<int>(chunks);
  const dim3 grid(static_cast<unsigned>(blocks_x), batch, p.chunks);
  Tensor chunk_end, chunk_start, chunk_dtsum;
  if (p.chunks > 1) {
    chunk_end = empty(DType::f32, {batch, chunks, p.D, p.N});
    chunk_start = empty(DType::f32, {batch, chunks, p.D, p.N});
    chunk_dtsum = empty(DType::f32, {batch, chunks, p.D});
    p.chunk_end = chunk_end.mutable_device_data<float>();
    p.chunk_start = chunk_start.mutable_device_data<float>();
    p.chunk_dtsum = chunk_dtsum.mutable_device_data<float>();
    scan_kernel<L, SPL, false, kVec><<<grid, kThreads, smem, stream()>>>(p);
    SUBQ_CUDA_CHECK_LAUNCH("selective scan chunk end states");
    const int64_t n = static_cast<int64_t>(batch) * p.D * p.N;
    chunk_carry_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream()>>>(p, batch);
    SUBQ_CUDA_CHECK_LAUNCH("selective scan chunk carry");
  }
  scan_kernel<L, SPL, true, kVec><<<grid, kThreads, smem, stream()>>>(p);
  SUBQ_CUDA_CHECK_LAUNCH("selective scan");
}

bool aligned16(std::initializer_list<const float*> rows) {
  return std::all_of(rows.begin(), rows.end(), [](const float* r) { return reinterpret_cast<uintptr_t>(r) % 16 == 0; });
}

void check_f32(const Tensor& t, const char* what) {
  check_device(t, Device::cuda, what);
  check_dtype(t, DType::f32, what);
  check_contiguous(t, what);
}

// Both row layouts of one split.
template <int L, int SPL>
void launch_split(Params p, int batch, bool vec) {
  vec ? launch<L, SPL, true>(p, batch) : launch<L, SPL, false>(p, batch);
}


}  // namespace

void selective_scan(const SelectiveScanInputs& in, const Tensor& state, const Tensor& y) {
  check_f32(in.x, "selective_scan x");
  if (in.x.ndim() != 3) throw Error("selective_scan x: expected [B, T, D], found " + in.x.str());
  const int64_t batch = in.x.dim(0), T = in.x.dim(1), D = in.x.dim(2);
  check_f32(in.A, "selective_scan A");
  if (in.A.ndim() != 2 || in.A.dim(0) != D)
    throw Error("selective_scan A: expected [" + std::to_string(D) + ", N], found " + in.A.str());
  const int64_t N = in.A.dim(1);
  if (N < 1 || N > 256) throw Error("selective_scan A: state size N must be in [1, 256], found " + in.A.str());
  check_f32(in.B, "selective_scan B");
  const int64_t G = in.B.ndim() == 4 ? in.B.dim(2) : 1;
  const Shape bc_shape = in.B.ndim() == 4 ? Shape{batch, T, G, N} : Shape{batch, T, N};
  check_shape(in.B, bc_shape, "selective_scan B");
  check_f32(in.C, "selective_scan C");
  check_shape(in.C, bc_shape, "selective_scan C");
  if (G < 1 || D % G != 0)
    throw Error("selective_scan B: groups G = " + std::to_string(G) + " must divide D = " + std::to_string(D));
  check_f32(in.dt, "selective_scan dt");
  check_shape(in.dt, in.x.shape(), "selective_scan dt");
  for (const auto& [t, what] : {std::pair{&in.D, "selective_scan D"}, std::pair{&in.dt_bias, "selective_scan dt_bias"}})
    if (t->defined()) {
      check_f32(*t, what);
      check_shape(*t, Shape{D}, what);
    }
  if (in.z.defined()) {
    check_f32(in.z, "selective_scan z");
    check_shape(in.z, in.x.shape(), "selective_scan z");
  }
  check_f32(state, "selective_scan state");
  check_shape(state, Shape{batch, D, N}, "selective_scan state");
  check_f32(y, "selective_scan y");
  check_shape(y, in.x.shape(), "selective_scan y");
  if (y.device_raw_data() == in.x.device_raw_data() || (in.z.defined() && y.device_raw_data() == in.z.device_raw_data()))
    throw Error("selective_scan y: must not alias x or z");
  if (batch > 65535) throw Error("selective_scan x: batch " + std::to_string(batch) + " exceeds 65535");
  if (batch == 0 || D == 0 || T == 0) return;

  Params p{};
  p.x = in.x.device_data<float>();
  p.dt = in.dt.device_data<float>();
  p.A = in.A.device_data<float>();
  p.B = in.B.device_data<float>();
  p.C = in.C.device_data<float>();
  p.Dskip = in.D.defined() ? in.D.device_data<float>() : nullptr;
  p.z = in.z.defined() ? in.z.device_data<float>() : nullptr;
  p.dt_bias = in.dt_bias.defined() ? in.dt_bias.device_data<float>() : nullptr;
  p.y = y.mutable_device_data<float>();
  p.state = state.mutable_device_data<float>();
  p.T = static_cast<int>(T);
  p.D = static_cast<int>(D);
  p.N = static_cast<int>(N);
  p.G = static_cast<int>(G);
  p.softplus = in.dt_softplus;
  const int b = static_cast<int>(batch);
  // One lane of N states for N <= 2 (no padded states; N % 4 != 0, so never vector rows),
  // else four states per lane and the fewest lanes that hold N (N = 16: four lanes), eight
  // states per lane past 128.
  const bool vec = D % 4 == 0 && N % 4 == 0 && aligned16({p.x, p.dt, p.z, p.B, p.C});
  if (N == 1) launch<1, 1, false>(p, b);
  else if (N == 2) launch<1, 2, false>(p, b);
  else if (N <= 4) launch_split<1, 4>(p, b, vec);
  else if (N <= 8) launch_split<2, 4>(p, b, vec);
  else if (N <= 16) launch_split<4, 4>(p, b, vec);
  else if (N <= 32) launch_split<8, 4>(p, b, vec);
  else if (N <= 64) launch_split<16, 4>(p, b, vec);
  else if (N <= 128) launch_split<32, 4>(p, b, vec);
  else launch_split<32, 8>(p, b, vec);
}

}  // namespace subq::cuda
