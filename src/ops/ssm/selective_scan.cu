// Selective scan, parallel over (batch, channel, 16-state slice) threads and over time
// chunks. A thread keeps its 16 states in registers; the lanes holding one channel's
// slices sum y with warp shuffles. When batch x channels alone cannot fill the GPU,
// time is cut into chunks and scanned in three passes:
//   1. each chunk's end state from a zero start, and its sum of dt (the chunk's decay is
//      exp(A * sum dt), computed in log space),
//   2. a short sequential pass over chunks turns these into each chunk's start state,
//   3. each chunk rescans from its true start state and writes y.
// Pass 1 re-reads x, dt and B: the price of parallelism over time at small batch.
// B and C rows are shared by the channels of a group: read through L1 (broadcast).
#include <algorithm>
#include <cstdint>
#include <cmath>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/core/cuda/mma.cuh"
#include "src/ops/ssm/selective_scan_cuda.h"

namespace subq::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kSlice = 16;  // states per thread
// Steps ahead whose inputs are prefetched into L1: a thread's scan is a chain of
// dependent steps, and few threads fit per SM, so without it every step waits a full
// DRAM round trip. The time loops are not unrolled: unrolling 2 or 4 steps took the
// registers from 110 to 143 / 163 (fewer resident warps) and cost 1.2-1.4x on an H200
// (2026-12-02). The explicit minimum of 1 block per SM in the launch bounds matters: with
// it ptxas gives the output pass 110 registers, without it 80 and 1.25x the time (the
// extra resident warps then likely share L1 among more prefetched steps; not profiled).
// Hoisting dt's softplus into an element-wise pass and stepping pointers
// instead of indexing (179 instead of 248 instructions per step, 77 registers) measured
// 0.82-0.91x of this form in the same call: not kept.
constexpr int kAhead = 16;
constexpr float kLog2e = 1.4426950408889634f;

struct Params {
  const float *x, *dt, *A, *B, *C, *Dskip, *z, *dt_bias;
  float* y;
  float* state;        // [batch, D, N]
  float* chunk_end;    // [batch, chunks, D, N]: end state of each chunk from a zero start
  float* chunk_start;  // [batch, chunks, D, N]: true start state of each chunk
  float* chunk_dtsum;  // [batch, chunks, D]
  int T, D, N, G, chunk_len, chunks;
  bool softplus;
};

__device__ __forceinline__ float effective_dt(bool softplus, float raw, float bias) {
  const float v = raw + bias;
  return softplus ? (v <= 20.f ? log1pf(__expf(v)) : v) : v;
}

// This thread's (batch, channel, slice, chunk); lanes of one channel are adjacent.
template <int S>
struct Slot {
  int b, d, n0, chunk, t0, t1;
  bool valid;
  __device__ Slot(const Params& p) {
    const int local = threadIdx.x / S;
    n0 = (threadIdx.x % S) * kSlice;
    const int channel = blockIdx.x * (kThreads / S) + local;
    valid = channel < p.D;
    d = valid ? channel : p.D - 1;  // idle lanes still join the shuffles
    b = blockIdx.y;
    chunk = blockIdx.z;
    t0 = chunk * p.chunk_len;
    t1 = min(p.T, t0 + p.chunk_len);
  }
};

// 16 consecutive entries of a B or C row from n0; zeros past N, so states past N stay 0.
// kVec: N % 4 == 0 and 16-byte aligned rows, read as float4.
template <bool kVec>
__device__ __forceinline__ void load_slice(float (&v)[kSlice], const float* __restrict__ row, int n0, int N) {
  if constexpr (kVec) {
#pragma unroll
    for (int i = 0; i < kSlice; i += 4) {
      const float4 q = n0 + i < N ? __ldg(reinterpret_cast<const float4*>(row + n0 + i)) : make_float4(0, 0, 0, 0);
      v[i] = q.x;
      v[i + 1] = q.y;
      v[i + 2] = q.z;
      v[i + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kSlice; ++i) v[i] = n0 + i < N ? __ldg(row + n0 + i) : 0.f;
  }
}

__device__ __forceinline__ void prefetch_l1(const float* p) {
  asm volatile("prefetch.global.L1 [%0];\n" ::"l"(p));
}

__device__ __forceinline__ void load_decay(float (&a2)[kSlice], const Params& p, int d, int n0) {
#pragma unroll
  for (int i = 0; i < kSlice; ++i) a2[i] = n0 + i < p.N ? p.A[static_cast<int64_t>(d) * p.N + n0 + i] * kLog2e : 0.f;
}

// Pass 1: end state of each chunk from a zero start, and the chunk's sum of dt.
template <int S, bool kVec>
__global__ void __launch_bounds__(kThreads, 1) chunk_end_state_kernel(const Params p) {
  const Slot<S> s(p);
  const float* __restrict__ x = p.x;
  const float* __restrict__ dt = p.dt;
  const float* __restrict__ Bm = p.B;
  float a2[kSlice], h[kSlice];
  load_decay(a2, p, s.d, s.n0);
#pragma unroll
  for (int i = 0; i < kSlice; ++i) h[i] = 0.f;
  const float bias = p.dt_bias ? p.dt_bias[s.d] : 0.f;
  const int g = s.d / (p.D / p.G);
  float dtsum = 0.f;
  for (int t = s.t0; t < min(s.t1, s.t0 + kAhead); ++t) {
    const int64_t bt = static_cast<int64_t>(s.b) * p.T + t;
    prefetch_l1(dt + bt * p.D + s.d);
    prefetch_l1(x + bt * p.D + s.d);
    prefetch_l1(Bm + (bt * p.G + g) * p.N + s.n0);
  }
#pragma unroll 1
  for (int t = s.t0; t < s.t1; ++t) {
    const int64_t bt = static_cast<int64_t>(s.b) * p.T + t;
    const float dtv = effective_dt(p.softplus, __ldg(dt + bt * p.D + s.d), bias);
    const float xv = __ldg(x + bt * p.D + s.d);
    if (t + kAhead < s.t1) {
      const int64_t ahead = bt + kAhead;
      prefetch_l1(dt + ahead * p.D + s.d);
      prefetch_l1(x + ahead * p.D + s.d);
      prefetch_l1(Bm + (ahead * p.G + g) * p.N + s.n0);
    }
    float bv[kSlice];
    load_slice<kVec>(bv, Bm + (bt * p.G + g) * p.N, s.n0, p.N);
    dtsum += dtv;
#pragma unroll
    for (int i = 0; i < kSlice; ++i) h[i] = fmaf(fast_exp2(dtv * a2[i]), h[i], dtv * xv * bv[i]);
  }
  if (!s.valid) return;
  const int64_t cd = (static_cast<int64_t>(s.b) * p.chunks + s.chunk) * p.D + s.d;
  if (s.n0 == 0) p.chunk_dtsum[cd] = dtsum;
#pragma unroll
  for (int i = 0; i < kSlice; ++i)
    if (s.n0 + i < p.N) p.chunk_end[cd * p.N + s.n0 + i] = h[i];
}

// Pass 2: one thread per (batch, channel, state) walks the chunks in order. Its loads do
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

// Pass 3 (the only pass for one chunk): scan from the true start state, write y.
template <int S, bool kVec>
__global__ void __launch_bounds__(kThreads, 1) scan_output_kernel(const Params p) {
  const Slot<S> s(p);
  const float* __restrict__ x = p.x;
  const float* __restrict__ dt = p.dt;
  const float* __restrict__ z = p.z;
  const float* __restrict__ Bm = p.B;
  const float* __restrict__ Cm = p.C;
  float* __restrict__ y = p.y;
  float a2[kSlice], h[kSlice];
  load_decay(a2, p, s.d, s.n0);
  const float* h0 = p.chunks > 1
                        ? p.chunk_start + ((static_cast<int64_t>(s.b) * p.chunks + s.chunk) * p.D + s.d) * p.N
                        : p.state + (static_cast<int64_t>(s.b) * p.D + s.d) * p.N;
#pragma unroll
  for (int i = 0; i < kSlice; ++i) h[i] = s.n0 + i < p.N ? h0[s.n0 + i] : 0.f;
  const float bias = p.dt_bias ? p.dt_bias[s.d] : 0.f;
  const float skip = p.Dskip ? p.Dskip[s.d] : 0.f;
  const int g = s.d / (p.D / p.G);
  for (int t = s.t0; t < min(s.t1, s.t0 + kAhead); ++t) {
    const int64_t bt = static_cast<int64_t>(s.b) * p.T + t;
    prefetch_l1(dt + bt * p.D + s.d);
    prefetch_l1(x + bt * p.D + s.d);
    if (z) prefetch_l1(z + bt * p.D + s.d);
    prefetch_l1(Bm + (bt * p.G + g) * p.N + s.n0);
    prefetch_l1(Cm + (bt * p.G + g) * p.N + s.n0);
  }
#pragma unroll 1
  for (int t = s.t0; t < s.t1; ++t) {
    const int64_t bt = static_cast<int64_t>(s.b) * p.T + t;
    const float dtv = effective_dt(p.softplus, __ldg(dt + bt * p.D + s.d), bias);
    const float xv = __ldg(x + bt * p.D + s.d);
    const float zv = z ? __ldg(z + bt * p.D + s.d) : 0.f;
    if (t + kAhead < s.t1) {
      const int64_t ahead = bt + kAhead;
      prefetch_l1(dt + ahead * p.D + s.d);
      prefetch_l1(x + ahead * p.D + s.d);
      if (z) prefetch_l1(z + ahead * p.D + s.d);
      prefetch_l1(Bm + (ahead * p.G + g) * p.N + s.n0);
      prefetch_l1(Cm + (ahead * p.G + g) * p.N + s.n0);
    }
    float bv[kSlice], cv[kSlice];
    load_slice<kVec>(bv, Bm + (bt * p.G + g) * p.N, s.n0, p.N);
    load_slice<kVec>(cv, Cm + (bt * p.G + g) * p.N, s.n0, p.N);
    float yv = 0.f;
#pragma unroll
    for (int i = 0; i < kSlice; ++i) {
      h[i] = fmaf(fast_exp2(dtv * a2[i]), h[i], dtv * xv * bv[i]);
      yv = fmaf(cv[i], h[i], yv);
    }
#pragma unroll
    for (int off = 1; off < S; off <<= 1) yv += __shfl_xor_sync(0xffffffffu, yv, off);
    if (s.valid && s.n0 == 0) {
      float out = fmaf(skip, xv, yv);
      if (z) out *= zv / (1.f + __expf(-zv));
      y[bt * p.D + s.d] = out;
    }
  }
  if (p.chunks == 1 && s.valid) {
    float* hs = p.state + (static_cast<int64_t>(s.b) * p.D + s.d) * p.N;
#pragma unroll
    for (int i = 0; i < kSlice; ++i)
      if (s.n0 + i < p.N) hs[s.n0 + i] = h[i];
  }
}

// Time chunks: as many as fill one wave of resident blocks (each thread's scan is a
// chain of dependent steps, so idle SMs cannot be made up by longer chains elsewhere),
// none shorter than 64 steps; one chunk (a single pass) when batch x channels already
// fill the GPU.
template <int S, bool kVec>
void launch(Params p, int batch) {
  static const int resident = [] {
    int blocks = 0;
    SUBQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, scan_output_kernel<S, kVec>, kThreads, 0));
    return std::max(1, blocks) * device_info().multiprocessors;
  }();
  const int64_t blocks_x = (p.D + kThreads / S - 1) / (kThreads / S);
  int64_t chunks = std::clamp<int64_t>(resident / (blocks_x * batch), 1, std::max(1, p.T / 64));
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
    chunk_end_state_kernel<S, kVec><<<grid, kThreads, 0, stream()>>>(p);
    SUBQ_CUDA_CHECK_LAUNCH("chunk_end_state_kernel");
    const int64_t n = static_cast<int64_t>(batch) * p.D * p.N;
    chunk_carry_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream()>>>(p, batch);
    SUBQ_CUDA_CHECK_LAUNCH("chunk_carry_kernel");
  }
  scan_output_kernel<S, kVec><<<grid, kThreads, 0, stream()>>>(p);
  SUBQ_CUDA_CHECK_LAUNCH("scan_output_kernel");
}

void check_f32(const Tensor& t, const char* what) {
  check_device(t, Device::cuda, what);
  check_dtype(t, DType::f32, what);
  check_contiguous(t, what);
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

  int slices = 1;
  while (slices * kSlice < N) slices *= 2;
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
  const bool vec = N % 4 == 0 && reinterpret_cast<uintptr_t>(p.B) % 16 == 0 && reinterpret_cast<uintptr_t>(p.C) % 16 == 0;
  switch (slices * 2 + (vec ? 1 : 0)) {
    case 2: launch<1, false>(p, b); break;
    case 3: launch<1, true>(p, b); break;
    case 4: launch<2, false>(p, b); break;
    case 5: launch<2, true>(p, b); break;
    case 8: launch<4, false>(p, b); break;
    case 9: launch<4, true>(p, b); break;
    case 16: launch<8, false>(p, b); break;
    case 17: launch<8, true>(p, b); break;
    case 32: launch<16, false>(p, b); break;
    default: launch<16, true>(p, b); break;
  }
}

}  // namespace subq::cuda
