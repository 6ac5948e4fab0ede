// JambaForCausalLM (transformers/models/jamba): Mamba-1 layers (with RMSNorms on dt, B,
// C) and attention layers without positional embedding (layer i is attention when
// i % attn_layer_period == attn_layer_offset), each followed by a SwiGLU MLP or, when
// i % expert_layer_period == expert_layer_offset, a top-k mixture of SwiGLU experts
// whose softmax weights are not renormalised.
#include <algorithm>

#include "src/models/architectures.h"
#include "src/models/weights.h"

namespace subq::models {
namespace {

int64_t period_field(const Config& c, const std::string& field, int64_t fallback) {
  const int64_t v = c.get_or<int64_t>(field, fallback);
  if (v < 0) throw Error(c.path() + ": field '" + field + "' must be >= 0");
  return v;
}

GatedWeights gated(const Checkpoint& w, const std::string& p, int64_t D, int64_t F) {
  return {matrix(w, p + "gate_proj.weight", F, D), matrix(w, p + "up_proj.weight", F, D),
          matrix(w, p + "down_proj.weight", D, F)};
}

}  // namespace

DecoderSpec build_jamba(const Config& c, const Checkpoint& w, const LoadOptions& options) {
  const int64_t D = positive(c, "hidden_size"), F = positive(c, "intermediate_size");
  const int64_t layers = positive(c, "num_hidden_layers");
  const double eps = c.get_or<double>("rms_norm_eps", 1e-6);
  const int64_t attn_period = std::max<int64_t>(1, period_field(c, "attn_layer_period", 8));
  const int64_t attn_offset = period_field(c, "attn_layer_offset", 4);
  const int64_t expert_period = std::max<int64_t>(1, period_field(c, "expert_layer_period", 2));
  const int64_t expert_offset = period_field(c, "expert_layer_offset", 1);
  const int64_t experts = c.has("num_experts") ? positive(c, "num_experts") : 16;
  const int64_t top_k = c.has("num_experts_per_tok") ? positive(c, "num_experts_per_tok") : 2;
  const Activation act = activation(c, "hidden_act", "silu");

  MambaConfig mc;
  mc.d_model = D;
  mc.d_inner = static_cast<int64_t>(c.get_or<double>("mamba_expand", 2.0) * static_cast<double>(D));
  mc.d_state = c.has("mamba_d_state") ? positive(c, "mamba_d_state") : 16;
  mc.d_conv = c.has("mamba_d_conv") ? positive(c, "mamba_d_conv") : 4;
  mc.dt_rank = dt_rank(c, "mamba_dt_rank", D);
  mc.conv_bias = c.get_or<bool>("mamba_conv_bias", true);
  mc.proj_bias = c.get_or<bool>("mamba_proj_bias", false);
  mc.inner_norms = true;
  mc.inner_norm_eps = static_cast<float>(eps);

  AttentionConfig ac = attention_config(c, options);
  ac.rope.rotary_dim = 0;  // Jamba's attention has no positional embedding

  DecoderSpec spec;
  spec.architecture = "JambaForCausalLM";
  embedding_and_head(c, w, "model.embed_tokens.weight", /*tied_default=*/false, spec);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const bool attention = l % attn_period == attn_offset;
    const bool moe = experts > 1 && l % expert_period == expert_offset;
    Block b;
    b.kind = std::string(attention ? "attention" : "mamba") + (moe ? "+moe" : "+mlp");
    b.mixer_norm = rms_norm(w, p + "input_layernorm.weight", D, eps);
    if (attention) {
      b.mixer = load_attention(ac, w, p + "self_attn.", false, options);
    } else {
      b.mixer = std::make_unique<MambaMixer>(mc, load_mamba_weights(mc, w, p + "mamba."));
    }
    b.mlp_norm = rms_norm(w, p + "pre_ff_layernorm.weight", D, eps);
    const std::string f = p + "feed_forward.";
    if (moe) {
      std::vector<GatedWeights> ew;
      for (int64_t e = 0; e < experts; ++e) ew.push_back(gated(w, f + "experts." + std::to_string(e) + ".", D, F));
      b.mlp = make_moe(matrix(w, f + "router.weight", experts, D), std::move(ew), top_k, /*normalize_top_k=*/false, act);
    } else {
      b.mlp = make_gated_mlp(gated(w, f, D, F), act);
    }
    spec.blocks.push_back(std::move(b));
  }
  spec.final_norm = rms_norm(w, "model.final_layernorm.weight", D, eps);
  return spec;
}

}  // namespace subq::models
