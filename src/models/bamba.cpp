// BambaForCausalLM (transformers/models/bamba): Mamba-2 layers with attention layers at
// attn_layer_indices (partial rotary embedding), each followed by a SwiGLU MLP:
// x + mixer(RMSNorm(x)), x + MLP(RMSNorm(x)).
#include <algorithm>

#include "src/models/architectures.h"
#include "src/models/weights.h"

namespace subq::models {

DecoderSpec build_bamba(const Config& c, const Checkpoint& w, const LoadOptions& options) {
  const int64_t D = positive(c, "hidden_size"), F = positive(c, "intermediate_size");
  const int64_t layers = positive(c, "num_hidden_layers");
  const double eps = c.get_or<double>("rms_norm_eps", 1e-5);
  const auto attn_layers = c.get_or<std::vector<int64_t>>("attn_layer_indices", {});
  for (int64_t i : attn_layers)
    if (i < 0 || i >= layers) throw Error(c.path() + ": attn_layer_indices has " + std::to_string(i) + ", out of range");
  if (c.get_or<bool>("mlp_bias", false)) throw Error(c.path() + ": mlp_bias = true is not supported");
  const Activation act = activation(c, "hidden_act", "silu");

  mixers::Mamba2Config mc;
  mc.hidden_size = D;
  mc.num_heads = positive(c, "mamba_n_heads");
  mc.head_dim = positive(c, "mamba_d_head");
  mc.n_groups = positive(c, "mamba_n_groups");
  mc.state_size = positive(c, "mamba_d_state");
  mc.conv_kernel = positive(c, "mamba_d_conv");
  mc.layer_norm_epsilon = static_cast<float>(eps);
  read_time_step_limit(c, "time_step_limit", mc);
  const int64_t expanded = static_cast<int64_t>(c.get_or<double>("mamba_expand", 2.0) * static_cast<double>(D));
  if (expanded != mc.intermediate_size())
    throw Error(c.path() + ": mamba_expand * hidden_size = " + std::to_string(expanded) +
                " but mamba_n_heads * mamba_d_head = " + std::to_string(mc.intermediate_size()));
  const bool proj_bias = c.get_or<bool>("mamba_proj_bias", false), conv_bias = c.get_or<bool>("mamba_conv_bias", true);

  AttentionConfig ac = attention_config(c, options);
  read_rope(c, ac);
  const bool attn_bias = c.get_or<bool>("attention_bias", false);

  DecoderSpec spec;
  spec.architecture = "BambaForCausalLM";
  embedding_and_head(c, w, "model.embed_tokens.weight", /*tied_default=*/false, spec);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const bool attention = std::find(attn_layers.begin(), attn_layers.end(), l) != attn_layers.end();
    Block b;
    b.kind = attention ? "attention+mlp" : "mamba2+mlp";
    b.mixer_norm = rms_norm(w, p + "input_layernorm.weight", D, eps);
    b.mixer = attention ? load_attention(ac, w, p + "self_attn.", attn_bias, options)
                        : load_mamba2_mixer(mc, w, p + "mamba.", proj_bias, conv_bias);
    b.mlp_norm = rms_norm(w, p + "pre_ff_layernorm.weight", D, eps);
    b.mlp = make_gated_mlp({matrix(w, p + "feed_forward.gate_proj.weight", F, D),
                            matrix(w, p + "feed_forward.up_proj.weight", F, D),
                            matrix(w, p + "feed_forward.down_proj.weight", D, F)},
                           act);
    spec.blocks.push_back(std::move(b));
  }
  spec.final_norm = rms_norm(w, "model.final_layernorm.weight", D, eps);
  return spec;
}

}  // namespace subq::models
