// JambaForCausalLM (transformers/models/jamba): Mamba-1 layers (with RMSNorms on dt, B,
// C) and attention layers without positional embedding (layer i is attention when
// i % attn_layer_period == attn_layer_offset), each followed by a SwiGLU MLP or, when
// i % expert_layer_period == expert_layer_offset, a top-k mixture of SwiGLU experts
// whose softmax weights are not renormalised.
#include <algorithm>

#include "src/mixers/mamba_mixer.h"
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
  const Activation act = parse_activation(c.get_or<std::string>("hidden_act", "silu"));

  MambaConfig mc;
  mc.d_model = D;
  mc.d_inner = static_cast<int64_t>(c.get_or<double>("mamba_expand", 2.0) * static_cast<double>(D));
  mc.d_state = c.has("mamba_d_state") ? positive(c, "mamba_d_state") : 16;
  mc.d_conv = c.has("mamba_d_conv") ? positive(c, "mamba_d_conv") : 4;
  mc.dt_rank = (D + 15) / 16;  // "auto"
  if (c.has("mamba_dt_rank")) {
    try {
      mc.dt_rank = positive(c, "mamba_dt_rank");
    } catch (const Error&) {
      if (c.get<std::string>("mamba_dt_rank") != "auto")
        throw Error(c.path() + ": field 'mamba_dt_rank' must be a positive integer or \"auto\"");
    }
  }
  mc.conv_bias = c.get_or<bool>("mamba_conv_bias", true);
  mc.proj_bias = c.get_or<bool>("mamba_proj_bias", false);
  mc.inner_norms = true;
  mc.inner_norm_eps = static_cast<float>(eps);

  AttentionConfig ac = attention_config(c, options);
  ac.rotary_dim = 0;  // Jamba's attention has no positional embedding

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
      b.mixer = load_attention(ac, w, p + "self_attn.", false);
    } else {
      const std::string m = p + "mamba.";
      const int64_t I = mc.d_inner, N = mc.d_state, R = mc.dt_rank;
      MambaWeights mw;
      mw.in_proj = matrix(w, m + "in_proj.weight", 2 * I, D);
      if (mc.proj_bias) {
        mw.in_proj_bias = w.get_float(m + "in_proj.bias", Shape{2 * I});
        mw.out_proj_bias = w.get_float(m + "out_proj.bias", Shape{D});
      }
      mw.conv_weight = w.get_float(m + "conv1d.weight", Shape{I, 1, mc.d_conv});
      if (mc.conv_bias) mw.conv_bias = w.get_float(m + "conv1d.bias", Shape{I});
      mw.x_proj = matrix(w, m + "x_proj.weight", R + 2 * N, I);
      mw.dt_proj = matrix(w, m + "dt_proj.weight", I, R);
      mw.dt_proj_bias = w.get_float(m + "dt_proj.bias", Shape{I});
      mw.A_log = w.get_float(m + "A_log", Shape{I, N});
      mw.D = w.get_float(m + "D", Shape{I});
      mw.out_proj = matrix(w, m + "out_proj.weight", D, I);
      mw.dt_norm = w.get_float(m + "dt_layernorm.weight", Shape{R});
      mw.b_norm = w.get_float(m + "b_layernorm.weight", Shape{N});
      mw.c_norm = w.get_float(m + "c_layernorm.weight", Shape{N});
      b.mixer = std::make_unique<MambaMixer>(mc, mw);
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
