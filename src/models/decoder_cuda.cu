// The decoder of src/models/decoder.cpp on an NVIDIA GPU: the same blocks, their weights
// copied to GPU memory once, activations and recurrent states f32 in GPU memory.
//   * Matmuls through cuBLAS: bf16/f16 checkpoints with the activations rounded to the
//     weight dtype (as transformers runs them), f32 checkpoints as f32 GEMMs.
//   * Attention (Llama-style, causal) on the tensor-core flash kernel for prefill
//     and the split-KV kernel for decode, over a bf16 KV cache. Head dims below 64, 128
//     or 256 are zero-padded to it: padded channels add nothing to q . k and their
//     outputs are dropped.
//   * Mamba-1 (and Jamba's variant, with dt, B and C RMS-normalised) on the causal conv1d
//     and selective scan kernels; Mamba-2 on the conv1d and the tensor-core SSD kernel
//     (x, B, C in bf16; head and state sizes below 64 or 128 zero-padded to it, which
//     adds nothing to the state or the output).
//   * MLPs and mixtures of experts as src/models/feed_forward_cuda.cu runs them.
//   * A sparse prefill policy builds the prompt's BlockMask for the block-sparse flash
//     kernel: the dynamic selectors (MoBA, HiP, XAttention, FlexPrefill) on the GPU, the
//     static ones on the CPU.
//   * One-token steps run as a captured CUDA graph (SUBQ_CUDA_GRAPHS=0 at load: eager);
//     mixtures of experts route such steps on the GPU.
//   * The window policy (sinks + sliding window) keeps a bounded ring of keys (KVState).
// Soft-capping, q/k norms and LayerNorm are an Error at load naming the layer. States are saved in the CPU decoder's format (attention as a bf16
// cache), so a state saved on one device continues on the other.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/mixers/attention_mixer.h"
#include "src/mixers/mamba2_mixer.h"
#include "src/mixers/mamba_mixer.h"
#include "src/models/decoder.h"
#include "src/models/device_linear.h"
#include "src/models/feed_forward_cuda.h"
#include "src/ops/attention/flash_attention.h"
#include "src/ops/attention/selectors/dynamic_selectors_cuda.h"
#include "src/ops/attention/selectors/static_selectors.h"
#include "src/ops/common/cuda_ops.h"
#include "src/ops/conv/causal_conv1d_cuda.h"
#include "src/ops/linear/gated_linear_attention_cuda.h"
#include "src/ops/ssm/selective_scan_cuda.h"

namespace subq {
namespace {

// Columns [c0, c1) of a [T, W] GPU matrix as a contiguous [T, c1 - c0] tensor: a view
// when they already are one (a single row: every decode step), else a copy.
Tensor columns(const Tensor& m, int64_t c0, int64_t c1) {
  const Tensor s = m.slice(1, c0, c1);
  if (s.is_contiguous()) return s;
  const Tensor out = cuda::empty(m.dtype(), {m.dim(0), c1 - c0});
  cuda::copy_rows(s, out);
  return out;
}

struct DeviceNorm {
  Tensor weight;
  float eps = 1e-5f;
  void apply(const Tensor& x, const Tensor& y, const Tensor& residual = {}) const {
    cuda::rms_norm(x, weight, eps, y, residual);
  }
};

DeviceNorm upload_norm(const Norm& n, const std::string& where) {
  if (n.layer_norm || n.bias.defined())
    throw Error("device cuda: " + where + " is a LayerNorm; the GPU decoder runs RMSNorm only");
  return {cuda::to_device(n.weight), n.eps};
}

// Per-layer state on the GPU. snapshot()/restore() use the CPU mixers' layouts.
class DeviceLayerState {
 public:
  virtual ~DeviceLayerState() = default;
  virtual size_t bytes() const = 0;
  virtual std::vector<Tensor> snapshot() const = 0;  // host tensors
  virtual void restore(const std::vector<Tensor>& parts, int64_t position) = 0;
  // Around a forward that takes the sequence to `length` tokens: prepare() makes room
  // before it (outside any graph capture), advance() updates the host's account after it.
  virtual void prepare(int64_t length) { (void)length; }
  virtual void advance(int64_t length) { (void)length; }
  // Changes when prepare() reallocates: a captured decode graph holds the old addresses.
  virtual int64_t layout() const { return 0; }
};

// Where a forward starts: the position of its first token, the positions of all T of
// them as i32 [T] on the GPU (uploaded once per forward, not once per layer: a host to
// device copy waits for the stream), and for a one-token step the length after it as i32
// [1] on the GPU. The kernels of a one-token step read these from GPU memory only, so
// that a captured graph of the step replays at any position.
struct Positions {
  int64_t first = 0;
  Tensor device;
  Tensor length;
};

class DeviceMixer {
 public:
  virtual ~DeviceMixer() = default;
  virtual DType input_dtype() const = 0;  // of x in forward(): the first matmul's
  // Whether a one-token forward reads nothing from the host that changes per step.
  virtual bool graph_safe() const { return true; }
  virtual std::unique_ptr<DeviceLayerState> new_state() const = 0;
  // y[T, D] = mixer(x[T, D]) continuing the state; advances it.
  virtual void forward(const Tensor& x, DeviceLayerState& state, const Positions& pos, const Tensor& y) const = 0;
};

// ---- attention ---------------------------------------------------------------------

// The keys and values of one attention layer, bf16 [capacity, Hkv, Dp]. Dense: slot p
// holds position p. Under a window policy (StreamingLLM: `sinks` first positions plus the
// last `window`) the cache is a ring of sinks + window slots (cuda::KvRing): a decode step
// writes its token over the one a window before it and attends to every slot, in any
// order (softmax does not care); a longer forward lays the kept keys out in position
// order first (linear()).
class KVState final : public DeviceLayerState {
 public:
  KVState(int64_t kv_heads, int64_t head_dim, int64_t padded, cuda::KvRing ring)
      : ring_(ring), hkv_(kv_heads), dh_(head_dim), dp_(padded) {}

  bool bounded() const { return ring_.window > 0; }
  int64_t slot_of(int64_t p) const {
    return !bounded() || p < ring_.sinks ? p : ring_.sinks + (p - ring_.sinks) % ring_.window;
  }
  // The positions a query at `next` or later can still see: [0, sinks) and
  // [run_start(next), next); all of [0, next) when dense.
  int64_t sinks_kept(int64_t next) const { return bounded() ? std::min(next, ring_.sinks) : next; }
  int64_t run_start(int64_t next) const {
    return bounded() ? std::max(ring_.sinks, next - (ring_.window - 1)) : next;
  }

  // Room for a sequence of `length` tokens (a ring never holds more than its slots);
  // capacity doubles so that decoding reallocates O(log T) times. Slots below the
  // capacity are those of positions below it, so growing copies the first ones.
  void reserve(int64_t length) {
    const int64_t slots = bounded() ? std::min(length, ring_.sinks + ring_.window) : length;
    if (slots <= capacity_) return;
    int64_t cap = std::max<int64_t>({slots, 2 * capacity_, 256});
    if (bounded()) cap = std::min(cap, ring_.sinks + ring_.window);
    Tensor k = cuda::empty(DType::bf16, {cap, hkv_, dp_}), v = cuda::empty(DType::bf16, {cap, hkv_, dp_});
    const int64_t kept = std::min(slots_, capacity_);
    if (kept > 0)
      for (auto [from, to] : {std::pair{&k_, &k}, std::pair{&v_, &v}})
        cuda::copy(rows(*from, 0, kept), rows(*to, 0, kept));
    k_ = k;
    v_ = v;
    capacity_ = cap;
  }
  // Slots [a, b) of a cache as [(b - a) * Hkv, Dp] rows.
  Tensor rows(const Tensor& cache, int64_t a, int64_t b) const {
    return cache.view({cache.dim(0) * hkv_, dp_}).slice(0, a * hkv_, b * hkv_);
  }
  // The first n slots as [1, n, Hkv, Dp].
  Tensor prefix(const Tensor& cache, int64_t n) const { return cache.slice(0, 0, n).view({1, n, hkv_, dp_}); }

  // Positions [p0, p1) between the cache and slots [b0, b0 + p1 - p0) of a buffer of the
  // cache's row layout: at most two contiguous runs of a ring, plus the sinks.
  void move_positions(const Tensor& cache, const Tensor& buffer, int64_t p0, int64_t p1, int64_t b0, bool to_cache) const {
    while (p0 < p1) {
      const int64_t s = slot_of(p0);
      const int64_t n = !bounded() ? p1 - p0
                        : p0 < ring_.sinks ? std::min(p1, ring_.sinks) - p0
                                           : std::min(p1 - p0, ring_.sinks + ring_.window - s);
      const Tensor c = rows(cache, s, s + n), b = rows(buffer, b0, b0 + n);
      to_cache ? cuda::copy(b, c) : cuda::copy(c, b);
      p0 += n;
      b0 += n;
    }
  }
  // The keys (or values) a forward from position `next` can see, in position order, into
  // the first slots of `buffer`; returns how many.
  int64_t linear(const Tensor& cache, const Tensor& buffer, int64_t next) const {
    const int64_t s0 = sinks_kept(next), r0 = run_start(next);
    move_positions(cache, buffer, 0, s0, 0, false);
    move_positions(cache, buffer, r0, next, s0, false);
    return s0 + std::max<int64_t>(next - r0, 0);
  }

  size_t bytes() const override {
    return static_cast<size_t>(2 * kept(slots_) * hkv_ * dh_) * sizeof(uint16_t);
  }
  int64_t kept(int64_t next) const { return sinks_kept(next) + std::max<int64_t>(next - run_start(next), 0); }
  void prepare(int64_t length) override { reserve(length); }
  void advance(int64_t length) override { slots_ = length; }
  int64_t layout() const override { return capacity_; }

  // As AttentionState: the kept keys and values [n, Hkv, Dh] bf16 in position order,
  // their positions, the next position.
  std::vector<Tensor> snapshot() const override {
    const int64_t n = kept(slots_);
    Tensor k = Tensor::empty(DType::bf16, {n, hkv_, dh_}), v = Tensor::empty(DType::bf16, {n, hkv_, dh_});
    for (auto [from, to] : {std::pair{&k_, &k}, std::pair{&v_, &v}}) {
      if (n == 0) break;
      const Tensor ordered = cuda::empty(DType::bf16, {n, hkv_, dp_}), narrow = cuda::empty(DType::bf16, {n * hkv_, dh_});
      linear(*from, ordered, slots_);
      cuda::copy_rows(ordered.view({n * hkv_, dp_}), narrow);
      cuda::copy(narrow, to->view({n * hkv_, dh_}));
    }
    Tensor pos = Tensor::empty(DType::i32, {n}), next = Tensor::empty(DType::i32, {1});
    const int64_t s0 = sinks_kept(slots_), r0 = run_start(slots_);
    for (int64_t i = 0; i < n; ++i) pos.mutable_data<int32_t>()[i] = static_cast<int32_t>(i < s0 ? i : r0 + i - s0);
    next.mutable_data<int32_t>()[0] = static_cast<int32_t>(slots_);
    return {k, v, pos, next};
  }

  // Takes any state holding every position the next query can see (a dense state's extra
  // keys are dropped under a window policy).
  void restore(const std::vector<Tensor>& t, int64_t position) override {
    if (t.size() != 4) throw Error("attention state: expected 4 tensors, found " + std::to_string(t.size()));
    const Tensor &k = t[0], &v = t[1], &pos = t[2], &next = t[3];
    if (k.ndim() != 3) throw Error("attention state: keys must be [slots, Hkv, Dh], found " + k.str());
    const int64_t slots = k.dim(0);
    for (const Tensor* x : {&k, &v}) {
      if (x->dtype() != DType::bf16 && x->dtype() != DType::f32)
        throw Error("attention state: K/V must be bf16 or f32, found " + x->str());
      check_shape(*x, Shape{slots, hkv_, dh_}, "attention state K/V");
      check_contiguous(*x, "attention state K/V");
    }
    check_dtype(pos, DType::i32, "attention state positions");
    check_shape(pos, Shape{slots}, "attention state positions");
    check_dtype(next, DType::i32, "attention state next position");
    check_shape(next, Shape{1}, "attention state next position");
    if (next.data<int32_t>()[0] != position)
      throw Error("attention state: next position " + std::to_string(next.data<int32_t>()[0]) + " for position " +
                  std::to_string(position));
    // Row of each position still needed, found in the saved (sorted) positions.
    const int32_t* p = pos.data<int32_t>();
    for (int64_t i = 1; i < slots; ++i)
      if (p[i] <= p[i - 1]) throw Error("attention state: positions must increase");
    const int64_t n = kept(position), s0 = sinks_kept(position), r0 = run_start(position);
    std::vector<int64_t> source(static_cast<size_t>(n));
    int64_t j = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t want = i < s0 ? i : r0 + i - s0;
      while (j < slots && p[j] < want) ++j;
      if (j == slots || p[j] != want)
        throw Error("attention state: position " + std::to_string(want) +
                    (bounded() ? " is inside the window but was evicted" : " was evicted (saved with a window policy)"));
      source[static_cast<size_t>(i)] = j;
    }
    slots_ = 0;
    reserve(position);
    slots_ = position;
    if (n == 0) return;
    for (auto [from, to] : {std::pair{&k, &k_}, std::pair{&v, &v_}}) {
      Tensor picked = Tensor::empty(from->dtype(), {n, hkv_, dh_});
      const size_t row = static_cast<size_t>(hkv_ * dh_) * dtype_size(from->dtype());
      for (int64_t i = 0; i < n; ++i)
        std::memcpy(static_cast<std::byte*>(picked.mutable_raw_data()) + i * row,
                    static_cast<const std::byte*>(from->raw_data()) + source[static_cast<size_t>(i)] * row, row);
      const Tensor ordered = cuda::empty(DType::bf16, {n, hkv_, dp_});
      cuda::copy_rows(cuda::to_device(picked).view({n * hkv_, dh_}), ordered.view({n * hkv_, dp_}));
      move_positions(*to, ordered, 0, s0, 0, true);
      move_positions(*to, ordered, r0, position, s0, true);
    }
  }

  Tensor k_, v_;  // bf16 [capacity, Hkv, Dp]
  int64_t capacity_ = 0, slots_ = 0;  // slots_: the sequence's length
  cuda::KvRing ring_;

 private:
  int64_t hkv_, dh_, dp_;
};

// The smallest size in `sizes` (ascending) holding n; Error naming `what` past the last.
int64_t padded(int64_t n, std::initializer_list<int64_t> sizes, const std::string& what) {
  for (int64_t p : sizes)
    if (n <= p) return p;
  throw Error("device cuda: " + what + " " + std::to_string(n) + " exceeds " + std::to_string(*(sizes.end() - 1)) +
              ", the GPU kernels' largest");
}

class DeviceAttention final : public DeviceMixer {
 public:
  DeviceAttention(const AttentionMixer& m, const std::string& where) : c_(m.config()) {
    if (c_.softcap > 0.f) throw Error("device cuda: " + where + ": logit soft-capping is CPU-only for now");
    // No architecture subq loads sets it yet; the GPU path waits for one to test against.
    if (c_.qk_norm) throw Error("device cuda: " + where + ": per-head q/k norms are CPU-only for now");
    dp_ = padded(c_.head_dim, {64, 128, 256}, where + ": head_dim");
    const AttentionWeights& w = m.weights();
    wqkv_ = stacked({{w.wq, w.bq}, {w.wk, w.bk}, {w.wv, w.bv}}, where);
    wo_ = {w.wo, w.bo};
    if (c_.rope.rotary_dim > 0) rope_ = cuda::upload(rope_table(c_.rope));
    scale_ = c_.scale > 0.f ? c_.scale : 1.f / std::sqrt(static_cast<float>(c_.head_dim));
  }

  DType input_dtype() const override { return wqkv_.input_dtype(); }
  // The split-KV decode kernel takes up to 16 query heads per KV head; more decode with
  // the flash kernel, whose key count comes from the host.
  bool graph_safe() const override { return c_.n_heads / c_.n_kv_heads <= 16; }

  std::unique_ptr<DeviceLayerState> new_state() const override {
    const cuda::KvRing ring = c_.sparse.bounds_cache() ? cuda::KvRing{c_.sparse.sinks, c_.sparse.window} : cuda::KvRing{};
    return std::make_unique<KVState>(c_.n_kv_heads, c_.head_dim, dp_, ring);
  }

  // The sparse policy's mask for a prompt (the first forward of a sequence), as the CPU
  // mixer builds it, from the rotated f32 queries and keys (q [T, Hq, Dh], k [T, Hkv, Dh],
  // head ranges of the fused projection): the dynamic selectors on the GPU, the static
  // ones (which read no q or k) on the CPU. Later forwards are exact over the cache, as
  // on the CPU.
  cuda::DeviceBlockMask prompt_mask(const Tensor& q, const Tensor& k) const {
    const int64_t T = q.dim(0);
    const attn::MaskGeometry g{T, T, 0, c_.sparse.block, c_.sparse.block, c_.n_heads, nullptr};
    if (c_.sparse.kind == "moba") return cuda::moba_mask(g, q, k, c_.sparse.top_k);
    if (c_.sparse.kind == "hip") return cuda::hip_mask(g, q, k, c_.sparse.top_k);
    if (c_.sparse.kind == "xattention")
      return cuda::xattention_mask(g, q, k, c_.sparse.threshold, c_.sparse.stride, scale_);
    if (c_.sparse.kind == "flexprefill") return cuda::flexprefill_mask(g, q, k, c_.sparse.gamma, c_.sparse.tau, scale_);
    return cuda::upload(attn::build_mask(c_.sparse, g, attn::AttentionArgs{}));  // a static selector
  }

  void forward(const Tensor& x, DeviceLayerState& base, const Positions& pos, const Tensor& y) const override {
    KVState& kv = static_cast<KVState&>(base);
    const int64_t position = pos.first;
    const int64_t T = x.dim(0), Hq = c_.n_heads, Hkv = c_.n_kv_heads, Dh = c_.head_dim;
    const Tensor qkv = cuda::empty(DType::f32, {T, Hq + 2 * Hkv, Dh});
    wqkv_.apply(x, qkv.view({T, (Hq + 2 * Hkv) * Dh}));
    const Tensor q = qkv.slice(1, 0, Hq), k = qkv.slice(1, Hq, Hq + Hkv), v = qkv.slice(1, Hq + Hkv, Hq + 2 * Hkv);
    if (rope_.pairs > 0) cuda::rope(qkv.slice(1, 0, Hq + Hkv), pos.device, rope_);
    const int64_t n = position + T;  // the caller's prepare(n) made room
    const Tensor first = pos.device.slice(0, 0, 1);
    const Tensor qp = cuda::empty(DType::bf16, {1, T, Hq, dp_}), op = cuda::empty(DType::bf16, {1, T, Hq, dp_});
    cuda::copy_rows(q, qp.view({T, Hq, dp_}));
    if (T == 1 && graph_safe()) {
      // The length is clamped to the capacity: a full ring is attended whole.
      cuda::kv_append(k, kv.k_, first, kv.ring_);
      cuda::kv_append(v, kv.v_, first, kv.ring_);
      cuda::decode_attention(qp, kv.k_.view({1, kv.capacity_, Hkv, dp_}), kv.v_.view({1, kv.capacity_, Hkv, dp_}), op,
                             pos.length, scale_);
    } else if (kv.bounded()) {
      window_attention(kv, k, v, position, qp, op);
    } else {
      cuda::kv_append(k, kv.k_, first);
      cuda::kv_append(v, kv.v_, first);
      if (!c_.sparse.is_dense() && position == 0)
        cuda::flash_attention(qp, kv.prefix(kv.k_, n), kv.prefix(kv.v_, n), op, prompt_mask(q, k), scale_);
      else
        cuda::flash_attention(qp, kv.prefix(kv.k_, n), kv.prefix(kv.v_, n), op, /*causal=*/true, scale_);
    }
    // bf16 -> bf16 where wo is bf16 (no conversion), else -> f32 and wo rounds it.
    const Tensor o = cuda::empty(wo_.input_dtype() == DType::bf16 ? DType::bf16 : DType::f32, {T, Hq * Dh});
    cuda::copy_rows(op.view({T * Hq, dp_}), o.view({T * Hq, Dh}));
    wo_.apply(o, y);
  }

 private:
  // A forward of several tokens under the window policy: the keys it can see in position
  // order, then its own, in one buffer whose slot j holds position j + shift; the window
  // mask in those slot coordinates (sinks keep their slots); then the positions later
  // queries see written to the ring.
  void window_attention(KVState& kv, const Tensor& k, const Tensor& v, int64_t position, const Tensor& qp,
                        const Tensor& op) const {
    const int64_t T = qp.dim(1), Hkv = c_.n_kv_heads, old = kv.kept(position), L = old + T, shift = position - old;
    const Tensor kb = cuda::empty(DType::bf16, {L, Hkv, dp_}), vb = cuda::empty(DType::bf16, {L, Hkv, dp_});
    Tensor at = Tensor::empty(DType::i32, {1});
    at.mutable_data<int32_t>()[0] = static_cast<int32_t>(old);
    const Tensor at_device = cuda::to_device(at);
    for (auto [cache, buffer, part] : {std::tuple{&kv.k_, &kb, &k}, std::tuple{&kv.v_, &vb, &v}}) {
      kv.linear(*cache, *buffer, position);
      cuda::kv_append(*part, *buffer, at_device);
    }
    const attn::MaskGeometry g{T, L, old, c_.sparse.block, c_.sparse.block, c_.n_heads, nullptr};
    const cuda::DeviceBlockMask mask = cuda::upload(attn::sliding_window_mask(g, c_.sparse.window, c_.sparse.sinks, true));
    cuda::flash_attention(qp, kb.view({1, L, Hkv, dp_}), vb.view({1, L, Hkv, dp_}), op, mask, scale_);
    const int64_t end = position + T, sink_end = std::min(end, c_.sparse.sinks);
    const int64_t run = std::max(position, kv.run_start(end));
    for (auto [cache, buffer] : {std::pair{&kv.k_, &kb}, std::pair{&kv.v_, &vb}}) {
      kv.move_positions(*cache, *buffer, position, sink_end, position - shift, true);
      kv.move_positions(*cache, *buffer, run, end, run - shift, true);
    }
  }

  AttentionConfig c_;
  int64_t dp_ = 64;
  DeviceLinear wqkv_, wo_;  // q, k, v stacked: one matmul
  cuda::DeviceRopeTable rope_;
  float scale_ = 1.f;
};

// ---- Mamba-1 -------------------------------------------------------------------------

class MambaDeviceState final : public DeviceLayerState {
 public:
  MambaDeviceState(const MambaConfig& c)
      : conv(cuda::to_device(Tensor::zeros(DType::f32, {1, c.d_conv - 1, c.d_inner}))),
        ssm(cuda::to_device(Tensor::zeros(DType::f32, {1, c.d_inner, c.d_state}))) {}
  size_t bytes() const override { return conv.nbytes() + ssm.nbytes(); }
  // As MambaState: the conv window [1, d_conv - 1, d_inner], the SSM state [1, d_inner, N].
  std::vector<Tensor> snapshot() const override { return {cuda::to_host(conv), cuda::to_host(ssm)}; }
  void restore(const std::vector<Tensor>& t, int64_t) override {
    if (t.size() != 2) throw Error("mamba state: expected 2 tensors, found " + std::to_string(t.size()));
    for (auto [from, to, what] : {std::tuple{&t[0], &conv, "mamba state conv window"},
                                  std::tuple{&t[1], &ssm, "mamba state SSM state"}}) {
      check_dtype(*from, DType::f32, what);
      check_shape(*from, to->shape(), what);
      cuda::copy(from->is_contiguous() ? *from : from->contiguous(), *to);
    }
  }
  Tensor conv, ssm;
};

class DeviceMamba final : public DeviceMixer {
 public:
  explicit DeviceMamba(const MambaMixer& m) : c_(m.config()) {
    const MambaMixer::Prepared p = m.prepared();
    in_proj_ = {p.in_proj, p.in_proj_bias};
    x_proj_ = {p.x_proj, Tensor()};
    dt_proj_ = {p.dt_proj, Tensor()};
    out_proj_ = {p.out_proj, p.out_proj_bias};
    conv_weight_ = cuda::to_device(p.conv_weight);
    conv_bias_ = upload_or_empty(p.conv_bias);
    dt_bias_ = cuda::to_device(p.dt_bias);
    A_ = cuda::to_device(p.A);
    D_ = cuda::to_device(p.D);
    if (c_.inner_norms)
      for (auto [from, to] : {std::pair{&p.dt_norm, &dt_norm_}, {&p.b_norm, &b_norm_}, {&p.c_norm, &c_norm_}})
        *to = cuda::to_device(*from);
  }

  DType input_dtype() const override { return in_proj_.input_dtype(); }
  std::unique_ptr<DeviceLayerState> new_state() const override { return std::make_unique<MambaDeviceState>(c_); }

  void forward(const Tensor& x, DeviceLayerState& base, const Positions&, const Tensor& y) const override {
    MambaDeviceState& s = static_cast<MambaDeviceState&>(base);
    const int64_t T = x.dim(0), I = c_.d_inner, N = c_.d_state, R = c_.dt_rank;
    const Tensor proj = cuda::empty(DType::f32, {T, 2 * I});
    in_proj_.apply(x, proj);
    const Tensor xs = columns(proj, 0, I).view({1, T, I}), z = columns(proj, I, 2 * I).view({1, T, I});
    const Tensor xc = cuda::empty(DType::f32, {1, T, I});
    cuda::causal_conv1d(xs, conv_weight_, conv_bias_, /*silu=*/true, s.conv, xc);

    const Tensor xdbl = cuda::empty(DType::f32, {T, R + 2 * N});
    x_proj_.apply(xc.view({T, I}), xdbl);
    const Tensor dt_low = columns(xdbl, 0, R), Bm = columns(xdbl, R, R + N), Cm = columns(xdbl, R + N, R + 2 * N);
    if (c_.inner_norms)  // Jamba: each part RMS-normalised before use (in place)
      for (auto [part, w] : {std::pair{&dt_low, &dt_norm_}, {&Bm, &b_norm_}, {&Cm, &c_norm_}})
        cuda::rms_norm(*part, *w, c_.inner_norm_eps, *part);
    const Tensor dt = cuda::empty(DType::f32, {1, T, I});
    dt_proj_.apply(dt_low, dt.view({T, I}));

    const Tensor ys = cuda::empty(DType::f32, {1, T, I});
    cuda::selective_scan({xc, dt, A_, Bm.view({1, T, N}), Cm.view({1, T, N}), D_, z, dt_bias_, /*dt_softplus=*/true},
                         s.ssm, ys);
    out_proj_.apply(ys.view({T, I}), y);
  }

 private:
  MambaConfig c_;
  DeviceLinear in_proj_, x_proj_, dt_proj_, out_proj_;
  Tensor conv_weight_, conv_bias_, dt_bias_, A_, D_;
  Tensor dt_norm_, b_norm_, c_norm_;  // Jamba's inner norms, or undefined
};

// ---- Mamba-2 ---------------------------------------------------------------------------

class Mamba2DeviceState final : public DeviceLayerState {
 public:
  Mamba2DeviceState(const mixers::Mamba2Config& c, int64_t np, int64_t pp)
      : conv(cuda::to_device(Tensor::zeros(DType::f32, {1, c.conv_kernel - 1, c.conv_dim()}))),
        ssm(cuda::to_device(Tensor::zeros(DType::f32, {1, c.num_heads, np, pp}))),
        h_(c.num_heads), n_(c.state_size), p_(c.head_dim), np_(np), pp_(pp) {}
  size_t bytes() const override { return conv.nbytes() + static_cast<size_t>(h_ * n_ * p_) * sizeof(float); }
  // The state's [N, P] corner of each head's padded [Np, Pp] block.
  Tensor corner() const { return ssm.view({h_, np_, pp_}).slice(1, 0, n_); }
  // As Mamba2State: the conv window [1, K - 1, conv_dim], the SSD state [1, H, N, P].
  std::vector<Tensor> snapshot() const override {
    const Tensor s = cuda::empty(DType::f32, {1, h_, n_, p_});
    cuda::copy_rows(corner(), s.view({h_, n_, p_}));
    return {cuda::to_host(conv), cuda::to_host(s)};
  }
  void restore(const std::vector<Tensor>& t, int64_t) override {
    if (t.size() != 2) throw Error("mamba2 state: expected 2 tensors, found " + std::to_string(t.size()));
    check_dtype(t[0], DType::f32, "mamba2 state conv window");
    check_shape(t[0], conv.shape(), "mamba2 state conv window");
    check_dtype(t[1], DType::f32, "mamba2 state SSD state");
    check_shape(t[1], Shape{1, h_, n_, p_}, "mamba2 state SSD state");
    cuda::copy(t[0].is_contiguous() ? t[0] : t[0].contiguous(), conv);
    ssm = cuda::to_device(Tensor::zeros(DType::f32, ssm.shape()));
    cuda::copy_rows(cuda::to_device(t[1]).view({h_, n_, p_}), corner());
  }
  Tensor conv, ssm;  // ssm [1, H, Np, Pp]

 private:
  int64_t h_, n_, p_, np_, pp_;
};

class DeviceMamba2 final : public DeviceMixer {
 public:
  DeviceMamba2(const mixers::Mamba2Mixer& m, const std::string& where) : c_(m.config()) {
    pp_ = padded(c_.head_dim, {64, 128}, where + ": head_dim");
    np_ = padded(c_.state_size, {64, 128}, where + ": state_size");
    const mixers::Mamba2Mixer::Prepared p = m.prepared();
    in_proj_ = {p.in_proj_w, p.in_proj_b};
    out_proj_ = {p.out_proj_w, p.out_proj_b};
    conv_w_ = cuda::to_device(p.conv_w);
    conv_b_ = upload_or_empty(p.conv_b);
    dt_bias_ = cuda::to_device(p.dt_bias);
    A_ = cuda::to_device(p.A);
    D_ = cuda::to_device(p.D);
    norm_w_ = cuda::to_device(p.norm_w);
  }

  DType input_dtype() const override { return in_proj_.input_dtype(); }
  std::unique_ptr<DeviceLayerState> new_state() const override {
    return std::make_unique<Mamba2DeviceState>(c_, np_, pp_);
  }

  void forward(const Tensor& x, DeviceLayerState& base, const Positions&, const Tensor& y) const override {
    Mamba2DeviceState& s = static_cast<Mamba2DeviceState&>(base);
    const int64_t T = x.dim(0), I = c_.intermediate_size(), H = c_.num_heads, P = c_.head_dim, G = c_.n_groups,
                  N = c_.state_size, CD = c_.conv_dim();
    const Tensor proj = cuda::empty(DType::f32, {T, c_.in_proj_size()});
    in_proj_.apply(x, proj);
    const Tensor xbc = cuda::empty(DType::f32, {1, T, CD});
    cuda::causal_conv1d(columns(proj, I, I + CD).view({1, T, CD}), conv_w_, conv_b_, /*silu=*/true, s.conv, xbc);
    const Tensor dt = cuda::empty(DType::f32, {1, T, H});
    cuda::softplus_clamp(proj.slice(1, I + CD, I + CD + H), dt_bias_, c_.time_step_limit_min, c_.time_step_limit_max,
                         dt.view({T, H}));

    const Tensor rows = xbc.view({T, CD});
    const Tensor xs = cuda::empty(DType::bf16, {1, T, H, pp_});
    const Tensor Bm = cuda::empty(DType::bf16, {1, T, G, np_}), Cm = cuda::empty(DType::bf16, {1, T, G, np_});
    heads(rows.slice(1, 0, I), H, P, xs);
    heads(rows.slice(1, I, I + G * N), G, N, Bm);
    heads(rows.slice(1, I + G * N, I + 2 * G * N), G, N, Cm);
    const Tensor ys = cuda::empty(DType::f32, {1, T, H, pp_});
    cuda::ssd(xs, dt, A_, Bm, Cm, D_, s.ssm, ys);

    Tensor yv;
    if (pp_ == P) {
      yv = ys.view({T, I});
    } else {
      yv = cuda::empty(DType::f32, {T, I});
      cuda::copy_rows(ys.view({T * H, pp_}), yv.view({T * H, P}));
    }
    const Tensor normed = cuda::empty(out_proj_.input_dtype(), {T, I});
    cuda::gated_rms_norm(yv, proj.slice(1, 0, I), norm_w_, I / G, c_.layer_norm_epsilon, normed);
    out_proj_.apply(normed, y);
  }

 private:
  // src [T, n * w] (a column range of the conv output) as bf16 [1, T, n, wp], each of
  // the n rows of w zero-padded to wp.
  static void heads(const Tensor& src, int64_t n, int64_t w, const Tensor& dst) {
    const int64_t T = src.dim(0), wp = dst.dim(3);
    if (wp == w) return cuda::copy_rows(src, dst.view({T, n * w}));
    const Tensor packed = cuda::empty(DType::f32, {T, n * w});
    cuda::copy_rows(src, packed);
    cuda::copy_rows(packed.view({T * n, w}), dst.view({T * n, wp}));
  }

  mixers::Mamba2Config c_;
  int64_t pp_ = 64, np_ = 64;
  DeviceLinear in_proj_, out_proj_;
  Tensor conv_w_, conv_b_, dt_bias_, A_, D_, norm_w_;
};

// ---- the model -------------------------------------------------------------------------

struct DeviceBlock {
  DeviceNorm mixer_norm, mlp_norm;
  std::unique_ptr<DeviceMixer> mixer;
  std::unique_ptr<DeviceFeedForward> mlp;
};

// One decode step captured as a CUDA graph: every kernel of the step, replayed with one
// launch. Valid while the layers' layouts (KV cache capacities) stay those it was
// captured with; its temporaries stay in its pool.
class DecodeGraph {
 public:
  DecodeGraph(cudaGraphExec_t exec, std::unique_ptr<cuda::GraphPool> pool, std::vector<int64_t> layout)
      : pool_(std::move(pool)), exec_(exec), layout_(std::move(layout)) {}
  ~DecodeGraph() { cudaGraphExecDestroy(exec_); }  // before pool_ returns its memory
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;
  const std::vector<int64_t>& layout() const { return layout_; }
  void launch() const { SUBQ_CUDA_CHECK(cudaGraphLaunch(exec_, cuda::stream())); }

 private:
  std::unique_ptr<cuda::GraphPool> pool_;
  cudaGraphExec_t exec_;
  std::vector<int64_t> layout_;
};

class DeviceDecoderState final : public ModelState {
 public:
  std::vector<std::unique_ptr<DeviceLayerState>> layers;  // null where a block has no mixer
  int64_t position_ = 0;
  // One-token steps: their inputs (i32 [3]: token, position, length after the step) and
  // logits (f32 [1, V]) at fixed GPU addresses, the layout the last eager step ran at, and
  // the graph captured after it.
  Tensor step, step_logits;
  std::vector<int64_t> eager_layout;
  std::unique_ptr<DecodeGraph> graph;

  int64_t position() const override { return position_; }
  // Grows every KV cache now, outside any capture, so that decoding up to `tokens` keeps
  // one layout and replays one graph instead of regrowing and recapturing on the way.
  void reserve(int64_t tokens) override {
    for (const auto& l : layers)
      if (l) l->prepare(tokens);
  }
  size_t state_bytes() const override {
    size_t n = 0;
    for (const auto& l : layers)
      if (l) n += l->bytes();
    return n;
  }
  std::vector<int64_t> layout() const {
    std::vector<int64_t> out;
    for (const auto& l : layers) out.push_back(l ? l->layout() : 0);
    return out;
  }
};

class CudaDecoder final : public Model {
 public:
  CudaDecoder(DecoderSpec spec, ModelInfo info) : info_(std::move(info)) {
    cuda::require_device();
    for (size_t l = 0; l < spec.blocks.size(); ++l) {
      const Block& b = spec.blocks[l];
      const std::string where = "layer " + std::to_string(l) + " (" + b.kind + ")";
      DeviceBlock d;
      if (b.mixer) {
        d.mixer_norm = upload_norm(b.mixer_norm, where + " norm");
        if (const auto* a = dynamic_cast<const AttentionMixer*>(b.mixer.get()))
          d.mixer = std::make_unique<DeviceAttention>(*a, where);
        else if (const auto* m = dynamic_cast<const MambaMixer*>(b.mixer.get()))
          d.mixer = std::make_unique<DeviceMamba>(*m);
        else if (const auto* m2 = dynamic_cast<const mixers::Mamba2Mixer*>(b.mixer.get()))
          d.mixer = std::make_unique<DeviceMamba2>(*m2, where);
        else
          throw Error("device cuda: " + where + ": the " + b.mixer->kind() +
                      " mixer is CPU-only for now (the GPU decoder runs attention, mamba and mamba2 layers)");
      }
      if (b.mlp) {
        d.mlp_norm = upload_norm(b.mlp_norm, where + " MLP norm");
        d.mlp = make_device_feed_forward(*b.mlp, where);
      }
      blocks_.push_back(std::move(d));
    }
    embedding_ = cuda::to_device(spec.embedding);
    // A tied head is the embedding table itself: one copy in GPU memory.
    head_.w = spec.head.raw_data() == spec.embedding.raw_data() ? embedding_ : cuda::to_device(spec.head);
    final_norm_ = upload_norm(spec.final_norm, "final norm");
    embedding_scale_ = spec.embedding_scale;
    for (const auto& b : blocks_)
      graphs_ = graphs_ && (!b.mixer || b.mixer->graph_safe());
    if (const char* env = std::getenv("SUBQ_CUDA_GRAPHS")) graphs_ = graphs_ && std::string(env) != "0";
  }

  const ModelInfo& info() const override { return info_; }

  std::unique_ptr<ModelState> new_state() const override {
    auto s = std::make_unique<DeviceDecoderState>();
    for (const auto& b : blocks_) s->layers.push_back(b.mixer ? b.mixer->new_state() : nullptr);
    return s;
  }

  void forward(std::span<const int32_t> tokens, ModelState& base, const Tensor& logits) const override {
    DeviceDecoderState& state = own(base, "model forward");
    const int64_t T = static_cast<int64_t>(tokens.size()), V = info_.vocab_size, first = state.position_;
    if (T == 0) throw Error("model forward: no tokens");
    check_dtype(logits, DType::f32, "model forward: logits");
    check_device(logits, Device::cpu, "model forward: logits");
    if (!(logits.shape() == Shape{T, V}) && !(logits.shape() == Shape{1, V}))
      throw Error("model forward: logits must be [" + std::to_string(T) + ", " + std::to_string(V) + "] or [1, " +
                  std::to_string(V) + "], found " + logits.str());
    for (int32_t t : tokens)  // checked here, so that no kernel has to report back
      if (t < 0 || t >= V)
        throw Error("model forward: token id " + std::to_string(t) + " is outside [0, " + std::to_string(V) + ")");
    if (first + T > INT32_MAX) throw Error("model forward: positions past 2^31 - 1");
    for (const auto& l : state.layers)
      if (l) l->prepare(first + T);

    if (T == 1) {
      decode_step(tokens[0], state);
      cuda::copy(state.step_logits, logits);
    } else {
      // ids [T], positions [T] and the length in one upload.
      Tensor host = Tensor::empty(DType::i32, {2 * T + 1});
      int32_t* h = host.mutable_data<int32_t>();
      std::copy(tokens.begin(), tokens.end(), h);
      for (int64_t t = 0; t < T; ++t) h[T + t] = static_cast<int32_t>(first + t);
      h[2 * T] = static_cast<int32_t>(first + T);
      const Tensor dev = cuda::to_device(host);
      const Tensor out = cuda::empty(DType::f32, {logits.dim(0), V});
      run(state, dev.slice(0, 0, T), {first, dev.slice(0, T, 2 * T), dev.slice(0, 2 * T, 2 * T + 1)}, out);
      cuda::copy(out, logits);
    }
    for (const auto& l : state.layers)
      if (l) l->advance(first + T);
    state.position_ += T;
  }
  void save_state(const ModelState& base, const std::string& path) const override {
    const DeviceDecoderState& state = own(base, "save state");
    std::vector<std::vector<Tensor>> layers;
    for (const auto& l : state.layers) layers.push_back(l ? l->snapshot() : std::vector<Tensor>{});
    write_state_file(path, state_fingerprint(info_), state.position_, layers);
  }

  std::unique_ptr<ModelState> load_state(const std::string& path) const override {
    std::vector<bool> stateful;
    for (const auto& b : blocks_) stateful.push_back(b.mixer != nullptr);
    const StateFile file = read_state_file(path, state_fingerprint(info_), stateful);
    auto state = std::unique_ptr<DeviceDecoderState>(static_cast<DeviceDecoderState*>(new_state().release()));
    state->position_ = file.position;
    for (size_t l = 0; l < state->layers.size(); ++l) {
      if (!state->layers[l]) continue;
      try {
        state->layers[l]->restore(file.layers[l], file.position);
      } catch (const Error& e) {
        throw Error(path + ": layer " + std::to_string(l) + ": " + e.what());
      }
    }
    return state;
  }

 private:
  // Every layer, from token ids to logits `out` ([1, V] or [T, V]); the state's room was
  // made by prepare().
  void run(DeviceDecoderState& state, const Tensor& ids, const Positions& pos, const Tensor& out) const {
    const int64_t T = ids.dim(0), D = info_.d_model;
    const Tensor x = cuda::empty(DType::f32, {T, D}), y = cuda::empty(DType::f32, {T, D});
    cuda::embedding(ids, embedding_, x, /*check_ids=*/false);
    if (embedding_scale_ != 1.f) cuda::scale(x, embedding_scale_);
    // Each block's output y is added to x by the next norm (the residual add fused in).
    bool pending = false;
    auto norm = [&](const DeviceNorm& n, const Tensor& rows_x, const Tensor& rows_y, const Tensor& normed) {
      n.apply(rows_x, normed, pending ? rows_y : Tensor());
      pending = true;
    };
    for (size_t l = 0; l < blocks_.size(); ++l) {
      const DeviceBlock& b = blocks_[l];
      if (b.mixer) {
        const Tensor h = cuda::empty(b.mixer->input_dtype(), {T, D});
        norm(b.mixer_norm, x, y, h);
        b.mixer->forward(h, *state.layers[l], pos, y);
      }
      if (b.mlp) {
        const Tensor h = cuda::empty(b.mlp->input_dtype(), {T, D});
        norm(b.mlp_norm, x, y, h);
        b.mlp->forward(h, y);
      }
    }
    const int64_t rows = out.dim(0);
    const Tensor normed = cuda::empty(head_.input_dtype(), {rows, D});
    norm(final_norm_, rows == T ? x : x.slice(0, T - 1, T), rows == T ? y : y.slice(0, T - 1, T), normed);
    head_.apply(normed, out);
  }

  // One token into state.step_logits. The first step at a layout runs eagerly (it also
  // warms every lazily initialised kernel setting and cuBLAS); the next one is captured
  // as a graph, which later steps replay until a KV cache grows.
  void decode_step(int32_t token, DeviceDecoderState& state) const {
    if (!state.step.defined()) {
      state.step = cuda::empty(DType::i32, {3});
      state.step_logits = cuda::empty(DType::f32, {1, info_.vocab_size});
    }
    const int32_t values[3] = {token, static_cast<int32_t>(state.position_), static_cast<int32_t>(state.position_ + 1)};
    // Pageable source: the copy is staged before this returns, so `values` may go.
    SUBQ_CUDA_CHECK(cudaMemcpyAsync(state.step.mutable_device_raw_data(), values, sizeof values,
                                    cudaMemcpyHostToDevice, cuda::stream()));
    const Positions pos{state.position_, state.step.slice(0, 1, 2), state.step.slice(0, 2, 3)};
    const Tensor ids = state.step.slice(0, 0, 1);
    const std::vector<int64_t> layout = state.layout();
    if (state.graph && state.graph->layout() == layout) return state.graph->launch();
    state.graph.reset();
    if (!graphs_ || state.eager_layout != layout) {
      run(state, ids, pos, state.step_logits);
      state.eager_layout = layout;
      return;
    }
    cudaStream_t s = cuda::stream();
    std::unique_ptr<cuda::GraphPool> pool = cuda::begin_graph_pool();
    SUBQ_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    cudaGraph_t graph = nullptr;
    try {
      run(state, ids, pos, state.step_logits);
    } catch (...) {
      cudaStreamEndCapture(s, &graph);
      if (graph) cudaGraphDestroy(graph);
      cuda::end_graph_pool();
      throw;
    }
    const cudaError_t ended = cudaStreamEndCapture(s, &graph);
    cuda::end_graph_pool();
    SUBQ_CUDA_CHECK(ended);
    cudaGraphExec_t exec = nullptr;
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    SUBQ_CUDA_CHECK(made);
    state.graph = std::make_unique<DecodeGraph>(exec, std::move(pool), layout);
    state.graph->launch();
  }

  const DeviceDecoderState& own(const ModelState& base, const char* who) const {
    auto* state = dynamic_cast<const DeviceDecoderState*>(&base);
    if (!state || state->layers.size() != blocks_.size())
      throw Error(std::string(who) + ": the state was not made by this model");
    return *state;
  }
  DeviceDecoderState& own(ModelState& base, const char* who) const {
    return const_cast<DeviceDecoderState&>(own(static_cast<const ModelState&>(base), who));
  }

  ModelInfo info_;
  std::vector<DeviceBlock> blocks_;
  bool graphs_ = true;  // decode steps as CUDA graphs (SUBQ_CUDA_GRAPHS=0 at load: off)
  Tensor embedding_;
  DeviceLinear head_;
  DeviceNorm final_norm_;
  float embedding_scale_ = 1.f;
};

}  // namespace

std::unique_ptr<Model> make_cuda_decoder(DecoderSpec spec, int64_t parameter_count, std::string weight_dtypes) {
  ModelInfo info = describe(spec, parameter_count, std::move(weight_dtypes));
  return std::make_unique<CudaDecoder>(std::move(spec), std::move(info));
}

}  // namespace subq
