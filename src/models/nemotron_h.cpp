// NemotronHForCausalLM (transformers/models/nemotron_h): every layer is one of Mamba-2,
// attention (no rotary embedding) or a plain MLP (relu^2), each as x + op(RMSNorm(x)).
// The schedule is `layers_block_type` (current transformers: "linear_attention" /
// "full_attention" / "mlp" / "moe", older: "mamba" / "attention") or the hub's
// `hybrid_override_pattern` string ("M" Mamba-2, "*" attention, "-" MLP, "E" MoE).
#include <algorithm>

#include "src/models/architectures.h"
#include "src/models/weights.h"

namespace subq::models {
namespace {

std::vector<std::string> layer_types(const Config& c) {
  std::vector<std::string> types;
  if (c.has("layers_block_type")) {
    types = c.get<std::vector<std::string>>("layers_block_type");
  } else if (c.has("hybrid_override_pattern")) {
    for (char ch : c.get<std::string>("hybrid_override_pattern")) {
      switch (ch) {
        case 'M': types.push_back("mamba"); break;
        case '*': types.push_back("attention"); break;
        case '-': types.push_back("mlp"); break;
        case 'E': types.push_back("moe"); break;
        default:
          throw Error(c.path() + ": hybrid_override_pattern has unknown layer '" + std::string(1, ch) +
                      "' (known: M, *, -, E)");
      }
    }
  } else {
    throw Error(c.path() + ": neither 'layers_block_type' nor 'hybrid_override_pattern' is present");
  }
  for (auto& t : types) {
    if (t == "linear_attention") t = "mamba";
    if (t == "full_attention") t = "attention";
    if (t == "moe") throw Error(c.path() + ": Nemotron-H mixture-of-experts layers are not supported");
    if (t != "mamba" && t != "attention" && t != "mlp")
      throw Error(c.path() + ": unknown Nemotron-H layer type \"" + t + "\"");
  }
  return types;
}

}  // namespace

DecoderSpec build_nemotron_h(const Config& c, const Checkpoint& w, const LoadOptions& options) {
  const int64_t D = positive(c, "hidden_size");
  const double eps = c.get_or<double>("layer_norm_epsilon", 1e-5);
  const std::vector<std::string> types = layer_types(c);

  mixers::Mamba2Config mc;
  mc.hidden_size = D;
  mc.num_heads = positive(c, "mamba_num_heads");
  mc.head_dim = positive(c, "mamba_head_dim");
  mc.n_groups = positive(c, "n_groups");
  mc.state_size = positive(c, "ssm_state_size");
  mc.conv_kernel = positive(c, "conv_kernel");
  mc.layer_norm_epsilon = static_cast<float>(eps);
  // transformers' Nemotron-H clamps dt to [time_step_min, inf), whatever time_step_limit says.
  mc.time_step_limit_min = static_cast<float>(c.get_or<double>("time_step_min", 0.001));
  if (c.get_or<std::string>("mamba_hidden_act", "silu") != "silu")
    throw Error(c.path() + ": field 'mamba_hidden_act' must be \"silu\"");
  const bool proj_bias = c.get_or<bool>("use_bias", false), conv_bias = c.get_or<bool>("use_conv_bias", true);

  AttentionConfig ac = attention_config(c, options);
  ac.rope.rotary_dim = 0;  // Nemotron-H attention has no positional embedding
  const bool attn_bias = c.get_or<bool>("attention_bias", false);
  const int64_t F = types.end() != std::find(types.begin(), types.end(), "mlp") ? positive(c, "intermediate_size") : 0;
  if (c.get_or<bool>("mlp_bias", false)) throw Error(c.path() + ": mlp_bias = true is not supported");
  const Activation act = parse_activation(c.get_or<std::string>("mlp_hidden_act", "relu2"));

  DecoderSpec spec;
  spec.architecture = "NemotronHForCausalLM";
  embedding_and_head(c, w, "backbone.embeddings.weight", /*tied_default=*/false, spec);
  for (size_t l = 0; l < types.size(); ++l) {
    const std::string p = "backbone.layers." + std::to_string(l) + ".";
    Block b;
    b.kind = types[l] == "mamba" ? "mamba2" : types[l];
    const Norm norm = rms_norm(w, p + "norm.weight", D, eps);
    if (types[l] == "mlp") {
      b.mlp_norm = norm;
      b.mlp = make_plain_mlp(matrix(w, p + "mixer.up_proj.weight", F, D), matrix(w, p + "mixer.down_proj.weight", D, F), act);
    } else {
      b.mixer_norm = norm;
      b.mixer = types[l] == "mamba" ? load_mamba2_mixer(mc, w, p + "mixer.", proj_bias, conv_bias)
                                    : load_attention(ac, w, p + "mixer.", attn_bias, options);
    }
    spec.blocks.push_back(std::move(b));
  }
  spec.final_norm = rms_norm(w, "backbone.norm_f.weight", D, eps);
  return spec;
}

}  // namespace subq::models
