// LlamaForCausalLM (transformers/models/llama): model.embed_tokens, per layer
// x + Attention(RMSNorm(x)) then x + SwiGLU(RMSNorm(x)), model.norm, lm_head.
#include "src/models/architectures.h"
#include "src/models/weights.h"

namespace subq::models {

DecoderSpec build_llama(const Config& c, const Checkpoint& w, const LoadOptions& options) {
  const int64_t D = positive(c, "hidden_size"), F = positive(c, "intermediate_size");
  const double eps = c.get_or<double>("rms_norm_eps", 1e-6);
  const bool mlp_bias = c.get_or<bool>("mlp_bias", false);
  const Activation act = activation(c, "hidden_act", "silu");
  AttentionConfig ac = attention_config(c, options);
  read_rope(c, ac);
  const bool attn_bias = c.get_or<bool>("attention_bias", false);

  DecoderSpec spec;
  spec.architecture = "LlamaForCausalLM";
  embedding_and_head(c, w, "model.embed_tokens.weight", /*tied_default=*/false, spec);
  for (int64_t l = 0; l < positive(c, "num_hidden_layers"); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Block b;
    b.kind = "attention+mlp";
    b.mixer_norm = rms_norm(w, p + "input_layernorm.weight", D, eps);
    b.mixer = load_attention(ac, w, p + "self_attn.", attn_bias, options);
    b.mlp_norm = rms_norm(w, p + "post_attention_layernorm.weight", D, eps);
    GatedWeights mlp{matrix(w, p + "mlp.gate_proj.weight", F, D), matrix(w, p + "mlp.up_proj.weight", F, D),
                     matrix(w, p + "mlp.down_proj.weight", D, F)};
    if (mlp_bias) {
      mlp.gate_bias = f32(w, p + "mlp.gate_proj.bias", {F});
      mlp.up_bias = f32(w, p + "mlp.up_proj.bias", {F});
      mlp.down_bias = f32(w, p + "mlp.down_proj.bias", {D});
    }
    b.mlp = make_gated_mlp(std::move(mlp), act);
    spec.blocks.push_back(std::move(b));
  }
  spec.final_norm = rms_norm(w, "model.norm.weight", D, eps);
  return spec;
}

}  // namespace subq::models
