// Llama-style softmax attention as a token mixer: q/k/v projections (optional bias),
// optional per-head RMSNorm of q and k, rotary embedding (NeoX "rotate half" layout over
// the first rotary_dim channels), GQA/MQA, a KV cache per sequence and the output
// projection. The `sparse` policy names a selector for prefill:
//   * dense: exact causal attention everywhere;
//   * window (with sinks): exact sliding-window attention at every step, and the KV
//     cache keeps only sinks + window - 1 keys (bounded state);
//   * any other selector builds the mask for the first forward of a sequence (the
//     prompt); later forwards (decode, continued prefill) are exact over the kept cache.
// Attention always reads K/V from the cache (so a bf16 cache rounds the prompt's keys
// exactly as it rounds decode's); dynamic selectors score the unrounded f32 keys.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "src/ops/attention/selectors/selector_spec.h"
#include "subq/mixer.h"
#include "subq/ops.h"
#include "subq/tensor.h"

namespace subq {

struct AttentionConfig {
  int64_t d_model = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  RopeSpec rope;  // rope.rotary_dim -1: head_dim; 0: no rotary embedding
  bool qk_norm = false;
  float norm_eps = 1e-6f;
  float scale = 0.f;    // 0: 1 / sqrt(head_dim)
  float softcap = 0.f;  // > 0: logit soft-cap (Gemma 2)
  // Element type of the KV cache: f32, or bf16 (half the bytes decode reads per key, K/V
  // rounded to nearest even as transformers keeps them for a bf16 checkpoint).
  DType kv_dtype = DType::f32;
  attn::SelectorSpec sparse;
};

// Weights as Hugging Face stores them: wq [Hq*Dh, D], wk/wv [Hkv*Dh, D], wo [D, Hq*Dh]
// (f32, bf16 or f16); biases [out] f32 or undefined; q_norm/k_norm [Dh] f32 when
// config.qk_norm.
struct AttentionWeights {
  Tensor wq, wk, wv, wo;
  Tensor bq, bk, bv, bo;
  Tensor q_norm, k_norm;
};

class AttentionMixer : public Mixer {
 public:
  // Checks every shape and dtype against the config; throws Error naming the tensor.
  AttentionMixer(const AttentionConfig& config, AttentionWeights weights);

  std::string kind() const override { return "attention"; }
  int64_t d_model() const override { return cfg_.d_model; }
  std::unique_ptr<MixerState> new_state(int64_t batch) const override;
  void forward(const Tensor& x, MixerState& state, const Tensor& y) const override;

  const AttentionConfig& config() const { return cfg_; }
  // As given, for a backend that runs the layer itself (the CUDA decoder).
  const AttentionWeights& weights() const { return w_; }

 private:
  AttentionConfig cfg_;
  AttentionWeights w_;
  RopeTable rope_;  // empty when rope.rotary_dim == 0
};

}  // namespace subq
