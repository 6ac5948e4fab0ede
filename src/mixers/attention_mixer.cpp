#include "src/mixers/attention_mixer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "src/ops/attention/flash.h"
#include "src/ops/attention/kv_cache.h"
#include "subq/ops.h"

namespace subq {
namespace {

// Query rows (times heads per KV head) up to which a continuation runs split-KV decode
// instead of the tiled prefill.
constexpr int64_t kDecodeRows = 32;
constexpr int64_t kPrefillBlock = 64;

class AttentionState : public MixerState {
 public:
  AttentionState(int64_t batch, const AttentionConfig& c)
      : kv_heads_(c.n_kv_heads), head_dim_(c.head_dim), dtype_(c.kv_dtype) {
    const bool bounded = c.sparse.bounds_cache();
    caches.reserve(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b)
      caches.emplace_back(c.n_kv_heads, c.head_dim, bounded ? c.sparse.window : 0, bounded ? c.sparse.sinks : 0,
                          c.kv_dtype);
  }
  int64_t batch() const override { return static_cast<int64_t>(caches.size()); }
  size_t state_bytes() const override {
    size_t n = 0;
    for (const auto& c : caches) n += c.bytes();
    return n;
  }
  void reserve(int64_t tokens) override {
    for (auto& c : caches) c.reserve_tokens(tokens);
  }
  // Per sequence: keys [slots, Hkv, Dh] in the cache dtype, values, positions i32
  // [slots], next position i32 [1].
  std::vector<Tensor> snapshot() const override {
    std::vector<Tensor> out;
    for (const auto& c : caches) {
      const int64_t slots = c.slots();
      Tensor k = Tensor::empty(dtype_, Shape{slots, kv_heads_, head_dim_});
      Tensor v = Tensor::empty(dtype_, Shape{slots, kv_heads_, head_dim_});
      Tensor p = Tensor::empty(DType::i32, Shape{slots});
      Tensor next = Tensor::empty(DType::i32, Shape{1});
      if (slots > 0) {
        std::memcpy(k.mutable_raw_data(), c.keys(), k.nbytes());
        std::memcpy(v.mutable_raw_data(), c.values(), v.nbytes());
        std::copy_n(c.positions(), slots, p.mutable_data<int32_t>());
      }
      next.mutable_data<int32_t>()[0] = static_cast<int32_t>(c.next_position());
      out.insert(out.end(), {k, v, p, next});
    }
    return out;
  }
  void restore(const std::vector<Tensor>& t) override {
    if (t.size() != 4 * caches.size())
      throw Error("attention state restore: expected " + std::to_string(4 * caches.size()) + " tensors, found " +
                  std::to_string(t.size()));
    for (size_t b = 0; b < caches.size(); ++b) {
      const Tensor &k = t[4 * b], &v = t[4 * b + 1], &p = t[4 * b + 2], &next = t[4 * b + 3];
      const std::string who = "attention state restore: sequence " + std::to_string(b);
      if (k.ndim() != 3) throw Error(who + " keys must be [slots, Hkv, Dh], found " + k.str());
      const int64_t slots = k.dim(0);
      for (const Tensor* x : {&k, &v})
        if (x->dtype() != dtype_)
          throw Error(who + (x == &k ? " keys" : " values") + ": this layer's KV cache is " + dtype_name(dtype_) +
                      ", the saved state holds " + x->str() + " (saved with another KV cache dtype)");
      check_shape(k, Shape{slots, kv_heads_, head_dim_}, (who + " keys").c_str());
      check_shape(v, Shape{slots, kv_heads_, head_dim_}, (who + " values").c_str());
      check_dtype(p, DType::i32, (who + " positions").c_str());
      check_shape(p, Shape{slots}, (who + " positions").c_str());
      check_dtype(next, DType::i32, (who + " next position").c_str());
      check_shape(next, Shape{1}, (who + " next position").c_str());
      for (const Tensor* x : {&k, &v, &p}) check_contiguous(*x, who.c_str());
      caches[b].assign(slots ? k.raw_data() : nullptr, slots ? v.raw_data() : nullptr,
                       slots ? p.data<int32_t>() : nullptr, slots, next.data<int32_t>()[0]);
    }
  }

  std::vector<attn::KVCache> caches;

 private:
  int64_t kv_heads_, head_dim_;
  DType dtype_;
};

void check_weight(const Tensor& w, const Shape& want, const char* name) {
  if (!w.defined()) throw Error(std::string("AttentionMixer: ") + name + " is missing");
  if (w.dtype() != DType::f32 && w.dtype() != DType::bf16 && w.dtype() != DType::f16)
    throw Error(std::string("AttentionMixer: ") + name + " must be f32, bf16 or f16, found " + w.str());
  check_shape(w, want, (std::string("AttentionMixer: ") + name).c_str());
}

void check_optional(const Tensor& t, int64_t n, const char* name) {
  if (!t.defined()) return;
  check_dtype(t, DType::f32, (std::string("AttentionMixer: ") + name).c_str());
  check_shape(t, Shape{n}, (std::string("AttentionMixer: ") + name).c_str());
}

}  // namespace

AttentionMixer::AttentionMixer(const AttentionConfig& config, AttentionWeights weights)
    : cfg_(config), w_(std::move(weights)) {
  const int64_t D = cfg_.d_model, Hq = cfg_.n_heads, Hkv = cfg_.n_kv_heads, Dh = cfg_.head_dim;
  if (D < 1 || Hq < 1 || Hkv < 1 || Dh < 1 || Hq % Hkv != 0)
    throw Error("AttentionMixer: need d_model, heads, kv heads, head_dim >= 1 with heads a multiple of kv heads, found " +
                std::to_string(D) + ", " + std::to_string(Hq) + ", " + std::to_string(Hkv) + ", " + std::to_string(Dh));
  if (cfg_.rope.rotary_dim < 0) cfg_.rope.rotary_dim = Dh;
  if (cfg_.rope.rotary_dim % 2 != 0 || cfg_.rope.rotary_dim > Dh)
    throw Error("AttentionMixer: rotary_dim must be even and <= head_dim, found " +
                std::to_string(cfg_.rope.rotary_dim));
  if (cfg_.rope.rotary_dim > 0) rope_ = rope_table(cfg_.rope);
  const attn::SelectorSpec& s = cfg_.sparse;
  bool causal = s.causal;
  if (s.kind == "neighborhood")
    for (int d = 0; d < s.nbhd.ndim; ++d) causal = causal && s.nbhd.causal[static_cast<size_t>(d)];
  if (!causal) throw Error("AttentionMixer: the sparse policy must be causal, found " + attn::to_string(s));
  if (s.bounds_cache() && s.window < 1) throw Error("AttentionMixer: window must be >= 1");
  if (cfg_.kv_dtype != DType::f32 && cfg_.kv_dtype != DType::bf16)
    throw Error(std::string("AttentionMixer: kv_dtype must be f32 or bf16, found ") + dtype_name(cfg_.kv_dtype));
  check_weight(w_.wq, Shape{Hq * Dh, D}, "wq");
  check_weight(w_.wk, Shape{Hkv * Dh, D}, "wk");
  check_weight(w_.wv, Shape{Hkv * Dh, D}, "wv");
  check_weight(w_.wo, Shape{D, Hq * Dh}, "wo");
  check_optional(w_.bq, Hq * Dh, "bq");
  check_optional(w_.bk, Hkv * Dh, "bk");
  check_optional(w_.bv, Hkv * Dh, "bv");
  check_optional(w_.bo, D, "bo");
  if (cfg_.qk_norm) {
    if (!w_.q_norm.defined() || !w_.k_norm.defined()) throw Error("AttentionMixer: qk_norm needs q_norm and k_norm");
    check_optional(w_.q_norm, Dh, "q_norm");
    check_optional(w_.k_norm, Dh, "k_norm");
  }
}

std::unique_ptr<MixerState> AttentionMixer::new_state(int64_t batch) const {
  if (batch < 1) throw Error("AttentionMixer: batch must be >= 1, found " + std::to_string(batch));
  return std::make_unique<AttentionState>(batch, cfg_);
}

void AttentionMixer::forward(const Tensor& x, MixerState& state, const Tensor& y) const {
  check_mixer_io(*this, x, state, y);
  auto* st = dynamic_cast<AttentionState*>(&state);
  if (!st) throw Error("attention forward: the state was not made by an AttentionMixer");
  const int64_t B = x.dim(0), T = x.dim(1), D = cfg_.d_model;
  const int64_t Hq = cfg_.n_heads, Hkv = cfg_.n_kv_heads, Dh = cfg_.head_dim;
  const Tensor q = Tensor::empty(DType::f32, Shape{B, T, Hq, Dh});
  const Tensor k = Tensor::empty(DType::f32, Shape{B, T, Hkv, Dh});
  const Tensor v = Tensor::empty(DType::f32, Shape{B, T, Hkv, Dh});
  const Tensor o = Tensor::empty(DType::f32, Shape{B, T, Hq, Dh});
  const Tensor rows = x.view({B * T, D});
  const LinearOutput qkv[] = {{w_.wq, w_.bq, q.view({B * T, Hq * Dh})},
                              {w_.wk, w_.bk, k.view({B * T, Hkv * Dh})},
                              {w_.wv, w_.bv, v.view({B * T, Hkv * Dh})}};
  linear_group(rows, qkv);
  if (cfg_.qk_norm) {
    rms_norm(q.view({B * T * Hq, Dh}), w_.q_norm, cfg_.norm_eps, q.view({B * T * Hq, Dh}));
    rms_norm(k.view({B * T * Hkv, Dh}), w_.k_norm, cfg_.norm_eps, k.view({B * T * Hkv, Dh}));
  }
  const attn::SelectorSpec& policy = cfg_.sparse;
  const float scale = cfg_.scale > 0.f ? cfg_.scale : 1.f / std::sqrt(static_cast<float>(Dh));
  const Tensor positions = Tensor::empty(DType::i32, Shape{T});
  for (int64_t b = 0; b < B; ++b) {
    attn::KVCache& cache = st->caches[static_cast<size_t>(b)];
    const int64_t q_offset = cache.next_position();
    if (cfg_.rope.rotary_dim > 0) {
      int32_t* p = positions.mutable_data<int32_t>();
      for (int64_t t = 0; t < T; ++t) p[t] = static_cast<int32_t>(q_offset + t);
      rope(q.select(0, b), positions, rope_);
      rope(k.select(0, b), positions, rope_);
    }
    const float* k_new = k.data<float>() + b * T * Hkv * Dh;
    const float* v_new = v.data<float>() + b * T * Hkv * Dh;
    cache.append(k_new, v_new, Hkv * Dh, T);

    attn::AttentionArgs a;
    a.q = q.data<float>() + b * T * Hq * Dh;
    a.q_row_stride = Hq * Dh;
    a.k = cache.keys();
    a.v = cache.values();
    a.kv_dtype = cache.dtype();
    a.k_row_stride = a.v_row_stride = cache.row_stride();
    a.o = o.mutable_data<float>() + b * T * Hq * Dh;
    a.o_row_stride = Hq * Dh;
    a.q_len = T;
    a.kv_len = cache.slots();
    a.q_heads = Hq;
    a.kv_heads = Hkv;
    a.head_dim = Dh;
    a.scale = scale;
    a.softcap = cfg_.softcap;
    a.key_positions = cache.positions();

    attn::ElementRule rule;
    rule.causal = true;
    if (policy.bounds_cache()) {
      rule.window_left = policy.window - 1;
      rule.sinks = policy.sinks;
    }
    const attn::MaskGeometry geom{T, cache.slots(), q_offset, kPrefillBlock, kPrefillBlock, Hq, cache.positions()};
    if (!policy.is_dense() && !policy.bounds_cache() && q_offset == 0) {
      attn::MaskGeometry g = geom;
      g.key_positions = nullptr;  // a fresh sequence: slot j holds position j
      // ... so the cache holds exactly this forward's rows; selectors read them in f32.
      attn::AttentionArgs qk = a;
      qk.k = k_new;
      qk.v = v_new;
      qk.kv_dtype = DType::f32;
      attn::flash_attention(a, attn::build_mask(policy, g, qk));
    } else if (T * (Hq / Hkv) <= kDecodeRows) {
      attn::decode_attention(a, rule, q_offset);
    } else if (policy.bounds_cache()) {
      attn::flash_attention(a, attn::sliding_window_mask(geom, policy.window, policy.sinks, true));
    } else {
      attn::flash_attention(a, attn::dense_mask(T, cache.slots(), true, q_offset,
                                                attn::dense_query_block(cache.slots(), Dh), kPrefillBlock,
                                                cache.positions()));
    }
    cache.evict();
  }
  linear(o.view({B * T, Hq * Dh}), w_.wo, w_.bo, y.view({B * T, D}));
}

}  // namespace subq
