// Routing runs a warp per token: the k best experts are taken in k rounds of a warp
// arg-max (value, then lower index, as the CPU's top_k orders them), each chosen expert's
// value then set to NaN, which the arg-max skips. The weight sums run on one lane in the
// CPU's order. The matrix-vector products give each warp two output rows of one pair's
// expert and read the weights in 16-byte loads: decode reads each chosen expert once, at
// 89-97% of the H200's copy rate at Jamba-v0.1's expert shape (docs/benchmarks.md).
#include "src/models/moe_cuda.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/core/cuda/float_cast.cuh"

namespace subq::cuda {
namespace {

struct Best {
  float v;
  int i;  // -1: none yet
};

__device__ __forceinline__ Best better(Best a, Best b) {
  if (b.i < 0) return a;
  if (a.i < 0) return b;
  return b.v > a.v || (b.v == a.v && b.i < a.i) ? b : a;
}

// The best of v[0, n) over the warp, NaN entries skipped; i = -1 if all are NaN.
__device__ Best warp_best(const float* v, int n) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  Best b{0.f, -1};
  for (int i = lane; i < n; i += 32)
    if (!isnan(v[i])) b = better(b, {v[i], i});
  for (int o = 16; o > 0; o >>= 1) b = better(b, {__shfl_xor_sync(~0u, b.v, o), __shfl_xor_sync(~0u, b.i, o)});
  return b;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(~0u, v, o));
  return v;
}

struct RouteArgs {
  const float* logits;
  const float* bias;  // group_limited only
  int32_t* experts;
  float* weights;
  int E, k, n_group, topk_group;
  bool group_limited, normalize;
  float scale;
};

// One warp per token; shared memory: score [E], choice [E], group score [n_group].
__global__ void __launch_bounds__(32) route_kernel(RouteArgs a) {
  extern __shared__ float smem[];
  float* score = smem;
  float* choice = smem + a.E;
  float* group_score = smem + 2 * a.E;
  const int lane = static_cast<int>(threadIdx.x);
  const float* logit = a.logits + static_cast<int64_t>(blockIdx.x) * a.E;
  if (!a.group_limited) {
    float m = -INFINITY;
    for (int e = lane; e < a.E; e += 32) m = fmaxf(m, logit[e]);
    m = warp_max(m);
    float sum = 0.f;
    for (int e = lane; e < a.E; e += 32) sum += score[e] = expf(logit[e] - m);
    sum = warp_sum(sum);
    for (int e = lane; e < a.E; e += 32) choice[e] = score[e] /= sum;
  } else {
    for (int e = lane; e < a.E; e += 32) {
      score[e] = 1.f / (1.f + expf(-logit[e]));
      choice[e] = score[e] + a.bias[e];
    }
    __syncwarp();
    // A group ranks by the sum of its two best choice values.
    const int G = a.E / a.n_group;
    for (int g = lane; g < a.n_group; g += 32) {
      float first = -INFINITY, second = -INFINITY;
      for (int e = g * G; e < (g + 1) * G; ++e) {
        const float c = choice[e];
        if (c > first) second = first, first = c;
        else if (c > second) second = c;
      }
      group_score[g] = first + second;
    }
    __syncwarp();
    for (int r = 0; r < a.topk_group; ++r) {
      const Best b = warp_best(group_score, a.n_group);
      __syncwarp();  // every lane's reads before the write
      if (lane == 0 && b.i >= 0) group_score[b.i] = NAN;  // kept
      __syncwarp();
    }
    for (int e = lane; e < a.E; e += 32)
      if (!isnan(group_score[e / G])) choice[e] = -INFINITY;
  }
  __syncwarp();
  const int64_t out = static_cast<int64_t>(blockIdx.x) * a.k;
  for (int j = 0; j < a.k; ++j) {
    const Best b = warp_best(choice, a.E);
    __syncwarp();
    if (lane == 0) {
      // Only NaN scores left (NaN logits): expert 0, weighted NaN, so the output shows it.
      a.experts[out + j] = b.i < 0 ? 0 : b.i;
      a.weights[out + j] = b.i < 0 ? NAN : score[b.i];
      if (b.i >= 0) choice[b.i] = NAN;
    }
    __syncwarp();
  }
  if (lane == 0) {
    float norm = 1.f;
    if (a.normalize) {
      norm = 0.f;
      for (int j = 0; j < a.k; ++j) norm += a.weights[out + j];
      if (a.group_limited) norm += 1e-20f;
    }
    for (int j = 0; j < a.k; ++j) a.weights[out + j] = a.weights[out + j] / norm * a.scale;
  }
}

constexpr int kWarps = 8;        // per CTA
constexpr int kRowsPerWarp = 2;  // output rows per warp: two weight rows' loads in flight per step

// kN consecutive elements from p, widened; kN * sizeof(T) bytes, 16-byte aligned when
// kN > 1.
template <class T, int kN>
__device__ __forceinline__ void load_widened(const T* p, float (&out)[kN]) {
  if constexpr (kN == 1) {
    out[0] = widen(*p);
  } else {
    constexpr int kChunks = kN * static_cast<int>(sizeof(T)) / 16;
    uint4 raw[kChunks];
#pragma unroll
    for (int c = 0; c < kChunks; ++c) raw[c] = __ldg(reinterpret_cast<const uint4*>(p) + c);
    const T* v = reinterpret_cast<const T*>(raw);
#pragma unroll
    for (int i = 0; i < kN; ++i) out[i] = widen(v[i]);
  }
}

// grid (ceil(N / (kWarps * kRowsPerWarp)), P); kVec elements per lane and step.
template <class Tw, class Tx, int kVec>
__global__ void __launch_bounds__(kWarps * 32)
    expert_linear_kernel(const Tw* __restrict__ w, const float* __restrict__ bias, const Tx* __restrict__ x,
                         const int32_t* __restrict__ experts, float* __restrict__ y, int N, int K, int pairs_per_row) {
  const int p = static_cast<int>(blockIdx.y), lane = static_cast<int>(threadIdx.x % 32);
  const int n0 = (static_cast<int>(blockIdx.x) * kWarps + static_cast<int>(threadIdx.x / 32)) * kRowsPerWarp;
  if (n0 >= N) return;
  const int64_t e = experts[p];
  const Tw* we = w + e * N * K + static_cast<int64_t>(n0) * K;
  const Tx* xr = x + static_cast<int64_t>(p / pairs_per_row) * K;
  float acc[kRowsPerWarp] = {};
#pragma unroll 4
  for (int k0 = lane * kVec; k0 < K; k0 += 32 * kVec) {
    float xv[kVec];
    load_widened<Tx, kVec>(xr + k0, xv);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (n0 + r >= N) break;
      float wv[kVec];
      load_widened<Tw, kVec>(we + static_cast<int64_t>(r) * K + k0, wv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc[r] = fmaf(wv[i], xv[i], acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const float v = warp_sum(acc[r]);
    if (lane == r && n0 + r < N) y[static_cast<int64_t>(p) * N + n0 + r] = v + (bias ? bias[e * N + n0 + r] : 0.f);
  }
}

__global__ void combine_kernel(const float* rows, const float* weights, float* y, int64_t W, int k, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / W, d = i % W;
    float s = 0.f;
    for (int j = 0; j < k; ++j) s += weights[t * k + j] * rows[(t * k + j) * W + d];
    y[i] = s;
  }
}

void check_operand(const Tensor& t, DType dtype, const char* what) {
  check_device(t, Device::cuda, what);
  check_dtype(t, dtype, what);
  check_contiguous(t, what);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class Tw, class Tx>
void launch_expert_linear(const Tensor& x, const Tensor& experts, const Tensor& w, const Tensor& bias, const Tensor& y) {
  const int N = static_cast<int>(w.dim(1)), K = static_cast<int>(w.dim(2)), P = static_cast<int>(experts.numel());
  const int pairs_per_row = static_cast<int>(P / x.dim(0));
  const dim3 grid((N + kWarps * kRowsPerWarp - 1) / (kWarps * kRowsPerWarp), P);
  const auto* wp = static_cast<const Tw*>(w.device_raw_data());
  const auto* xp = static_cast<const Tx*>(x.device_raw_data());
  const float* bp = bias.defined() ? bias.device_data<float>() : nullptr;
  constexpr int kVec = 16 / sizeof(Tw);
  if (K % kVec == 0 && aligned16(wp) && aligned16(xp))
    expert_linear_kernel<Tw, Tx, kVec><<<grid, kWarps * 32, 0, stream()>>>(
        wp, bp, xp, experts.device_data<int32_t>(), y.mutable_device_data<float>(), N, K, pairs_per_row);
  else
    expert_linear_kernel<Tw, Tx, 1><<<grid, kWarps * 32, 0, stream()>>>(
        wp, bp, xp, experts.device_data<int32_t>(), y.mutable_device_data<float>(), N, K, pairs_per_row);
  SUBQ_CUDA_CHECK_LAUNCH("expert_linear_kernel");
}

template <class Tw>
void dispatch_x(const Tensor& x, const Tensor& experts, const Tensor& w, const Tensor& bias, const Tensor& y) {
  if (x.dtype() == DType::f32) launch_expert_linear<Tw, float>(x, experts, w, bias, y);
  else launch_expert_linear<Tw, Tw>(x, experts, w, bias, y);
}

}  // namespace

void route_experts(const RouteRule& rule, const Tensor& correction_bias, const Tensor& router_out,
                   const Tensor& experts, const Tensor& weights) {
  const bool group_limited = rule.kind == RouteRule::Kind::group_limited;
  const int64_t E = rule.experts, k = rule.top_k;
  check_route_rule(rule);
  // Shared memory of 2E + n_group floats per token.
  if (E > 4096) throw Error("route_experts: expected at most 4096 experts, found " + std::to_string(E));
  check_operand(router_out, DType::f32, "route_experts router outputs");
  if (router_out.ndim() != 2 || router_out.dim(1) != E)
    throw Error("route_experts: router outputs must be [T, " + std::to_string(E) + "], found " + router_out.str());
  const int64_t T = router_out.dim(0);
  check_operand(experts, DType::i32, "route_experts experts");
  check_operand(weights, DType::f32, "route_experts weights");
  check_shape(experts, Shape{T, k}, "route_experts experts");
  check_shape(weights, Shape{T, k}, "route_experts weights");
  if (group_limited) {
    check_operand(correction_bias, DType::f32, "route_experts correction bias");
    check_shape(correction_bias, Shape{E}, "route_experts correction bias");
  }
  if (T == 0) return;
  const RouteArgs args{router_out.device_data<float>(),
                       group_limited ? correction_bias.device_data<float>() : nullptr,
                       experts.mutable_device_data<int32_t>(),
                       weights.mutable_device_data<float>(),
                       static_cast<int>(E),
                       static_cast<int>(k),
                       static_cast<int>(rule.n_group),
                       static_cast<int>(rule.topk_group),
                       group_limited,
                       rule.normalize,
                       group_limited ? rule.scale : 1.f};
  const size_t smem = (2 * E + rule.n_group) * sizeof(float);
  route_kernel<<<static_cast<unsigned>(T), 32, smem, stream()>>>(args);
  SUBQ_CUDA_CHECK_LAUNCH("route_kernel");
}

void expert_linear(const Tensor& x, const Tensor& experts, const Tensor& w, const Tensor& bias, const Tensor& y) {
  check_device(w, Device::cuda, "expert_linear w");
  check_contiguous(w, "expert_linear w");
  if (w.ndim() != 3) throw Error("expert_linear: w must be [E, N, K], found " + w.str());
  const int64_t E = w.dim(0), N = w.dim(1), K = w.dim(2);
  check_operand(experts, DType::i32, "expert_linear experts");
  if (experts.ndim() != 2) throw Error("expert_linear: experts must be [T, k], found " + experts.str());
  const int64_t P = experts.numel();
  check_device(x, Device::cuda, "expert_linear x");
  check_contiguous(x, "expert_linear x");
  if (x.ndim() != 2 || x.dim(1) != K || (x.dim(0) != experts.dim(0) && x.dim(0) != P))
    throw Error("expert_linear: x must be [" + std::to_string(experts.dim(0)) + " or " + std::to_string(P) + ", " +
                std::to_string(K) + "], found " + x.str());
  if (x.dtype() != DType::f32 && x.dtype() != w.dtype())
    throw Error("expert_linear: x must be f32 or w's dtype, found " + x.str() + " and " + w.str());
  if (bias.defined()) {
    check_operand(bias, DType::f32, "expert_linear bias");
    check_shape(bias, Shape{E, N}, "expert_linear bias");
  }
  check_operand(y, DType::f32, "expert_linear y");
  check_shape(y, Shape{P, N}, "expert_linear y");
  if (N * K > INT32_MAX || P > 65535) throw Error("expert_linear: expert " + w.str() + " or " + std::to_string(P) + " pairs too large");
  if (P == 0 || N == 0) return;
  switch (w.dtype()) {
    case DType::f32: return launch_expert_linear<float, float>(x, experts, w, bias, y);
    case DType::bf16: return dispatch_x<__nv_bfloat16>(x, experts, w, bias, y);
    case DType::f16: return dispatch_x<__half>(x, experts, w, bias, y);
    default: throw Error("expert_linear: w must be f32, bf16 or f16, found " + w.str());
  }
}

void combine_experts(const Tensor& rows, const Tensor& weights, const Tensor& y) {
  check_operand(rows, DType::f32, "combine_experts rows");
  check_operand(weights, DType::f32, "combine_experts weights");
  check_operand(y, DType::f32, "combine_experts y");
  if (weights.ndim() != 2 || y.ndim() != 2 || weights.dim(0) != y.dim(0))
    throw Error("combine_experts: weights [T, k] and y [T, W] expected, found " + weights.str() + " and " + y.str());
  check_shape(rows, Shape{weights.numel(), y.dim(1)}, "combine_experts rows");
  const int64_t n = y.numel();
  if (n == 0) return;
  combine_kernel<<<blocks_for(n), 256, 0, stream()>>>(rows.device_data<float>(), weights.device_data<float>(),
                                                      y.mutable_device_data<float>(), y.dim(1),
                                                      static_cast<int>(weights.dim(1)), n);
  SUBQ_CUDA_CHECK_LAUNCH("combine_kernel");
}

}  // namespace subq::cuda
