// Causal depthwise conv1d: one thread per (batch, channel, 16 time steps). Consecutive
// threads take consecutive channels, so every load and store is coalesced; the W - 1
// inputs before the tile come from x or, at the start, from the carried state.
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/ops/conv/causal_conv1d_cuda.h"

namespace subq::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kSteps = 16;

struct Params {
  const float *x, *w, *bias, *state;
  float* y;
  float* new_state;
  int T, D;
  bool silu;
};

template <int W>
__global__ void __launch_bounds__(kThreads) conv_kernel(const Params p) {
  const int d = blockIdx.x * kThreads + threadIdx.x;
  if (d >= p.D) return;
  const int b = blockIdx.z;
  const int t0 = blockIdx.y * kSteps;
  const int64_t base = static_cast<int64_t>(b) * p.T * p.D + d;
  float w[W];
#pragma unroll
  for (int k = 0; k < W; ++k) w[k] = p.w[static_cast<int64_t>(d) * W + k];
  const float bias = p.bias ? p.bias[d] : 0.f;
  // u[i] is the input at time t0 - (W - 1) + i.
  float u[kSteps + W - 1];
#pragma unroll
  for (int i = 0; i < kSteps + W - 1; ++i) {
    const int t = t0 - (W - 1) + i;
    if (t >= 0) u[i] = t < p.T ? __ldg(p.x + base + static_cast<int64_t>(t) * p.D) : 0.f;
    else u[i] = p.state ? p.state[(static_cast<int64_t>(b) * (W - 1) + (t + W - 1)) * p.D + d] : 0.f;
  }
#pragma unroll
  for (int i = 0; i < kSteps; ++i) {
    if (t0 + i >= p.T) break;
    float acc = bias;
#pragma unroll
    for (int k = 0; k < W; ++k) acc = fmaf(w[k], u[i + k], acc);
    if (p.silu) acc = acc / (1.f + __expf(-acc));
    p.y[base + static_cast<int64_t>(t0 + i) * p.D] = acc;
  }
}

// The last W - 1 inputs of [state; x], written to new_state (a separate buffer: the
// conv kernel may still read the old state).
__global__ void state_kernel(const Params p, int width, int batch) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(batch) * (width - 1) * p.D) return;
  const int d = static_cast<int>(i % p.D);
  const int j = static_cast<int>(i / p.D % (width - 1));
  const int b = static_cast<int>(i / (static_cast<int64_t>(p.D) * (width - 1)));
  const int t = p.T - (width - 1) + j;  // position in x; negative: still in the old state
  p.new_state[i] = t >= 0 ? p.x[(static_cast<int64_t>(b) * p.T + t) * p.D + d]
                          : p.state[(static_cast<int64_t>(b) * (width - 1) + j + p.T) * p.D + d];
}

template <int W>
void launch(const Params& p, int batch) {
  const dim3 grid((p.D + kThreads - 1) / kThreads, (p.T + kSteps - 1) / kSteps, batch);
  conv_kernel<W><<<grid, kThreads, 0, stream()>>>(p);
  SUBQ_CUDA_CHECK_LAUNCH("conv_kernel");
}

void check_f32(const Tensor& t, const char* what) {
  check_device(t, Device::cuda, what);
  check_dtype(t, DType::f32, what);
  check_contiguous(t, what);
}

}  // namespace

void causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Tensor& state,
                   const Tensor& y) {
  check_f32(x, "causal_conv1d x");
  if (x.ndim() != 3) throw Error("causal_conv1d x: expected [B, T, D], found " + x.str());
  const int64_t batch = x.dim(0), T = x.dim(1), D = x.dim(2);
  check_f32(weight, "causal_conv1d weight");
  if (weight.ndim() != 2 || weight.dim(0) != D || weight.dim(1) < 2 || weight.dim(1) > 8)
    throw Error("causal_conv1d weight: expected [" + std::to_string(D) + ", W] with W in [2, 8], found " +
                weight.str());
  const int64_t W = weight.dim(1);
  if (bias.defined()) {
    check_f32(bias, "causal_conv1d bias");
    check_shape(bias, Shape{D}, "causal_conv1d bias");
  }
  if (state.defined()) {
    check_f32(state, "causal_conv1d state");
    check_shape(state, Shape{batch, W - 1, D}, "causal_conv1d state");
  }
  check_f32(y, "causal_conv1d y");
  check_shape(y, x.shape(), "causal_conv1d y");
  if (y.device_raw_data() == x.device_raw_data()) throw Error("causal_conv1d y: must not alias x");
  if (batch > 65535 || (T + kSteps - 1) / kSteps > 65535)
    throw Error("causal_conv1d x: " + x.str() + " exceeds the grid limits (B <= 65535, T <= 1048560)");
  if (batch == 0 || T == 0 || D == 0) return;

  Params p{};
  p.x = x.device_data<float>();
  p.w = weight.device_data<float>();
  p.bias = bias.defined() ? bias.device_data<float>() : nullptr;
  p.state = state.defined() ? state.device_data<float>() : nullptr;
  p.y = y.mutable_device_data<float>();
  p.T = static_cast<int>(T);
  p.D = static_cast<int>(D);
  p.silu = silu;
  const int b = static_cast<int>(batch);
  switch (W) {
    case 2: launch<2>(p, b); break;
    case 3: launch<3>(p, b); break;
    case 4: launch<4>(p, b); break;
    case 5: launch<5>(p, b); break;
    case 6: launch<6>(p, b); break;
    case 7: launch<7>(p, b); break;
    default: launch<8>(p, b); break;
  }
  if (state.defined()) {
    const Tensor next = empty(DType::f32, state.shape());
    p.new_state = next.mutable_device_data<float>();
    const int64_t n = batch * (W - 1) * D;
    state_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream()>>>(p, static_cast<int>(W), b);
    SUBQ_CUDA_CHECK_LAUNCH("state_kernel");
    copy(next, state);
  }
}

}  // namespace subq::cuda
