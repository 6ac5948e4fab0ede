// NemotronHForCausalLM (transformers/models/nemotron_h): every layer is one of Mamba-2,
// attention (no rotary embedding), a plain MLP (relu^2) or a mixture of plain experts
// (group-limited sigmoid routing, optional latent projection, one shared expert), each as
// x + op(RMSNorm(x)).
// The schedule is `layers_block_type` (current transformers: "linear_attention" /
// "full_attention" / "mlp" / "moe", older: "mamba" / "attention") or the hub's
// `hybrid_override_pattern` string ("M" Mamba-2, "*" attention, "-" MLP, "E" MoE).
#include <algorithm>
#include <optional>

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
    if (t != "mamba" && t != "attention" && t != "mlp" && t != "moe")
      throw Error(c.path() + ": unknown Nemotron-H layer type \"" + t + "\"");
  }
  return types;
}

int64_t positive_or(const Config& c, const std::string& field, int64_t fallback) {
  return c.has(field) ? positive(c, field) : fallback;
}

struct MoeConfig {
  GroupLimitedRouter router;  // weights unset
  int64_t experts, intermediate, shared_intermediate, latent;
  bool latent_projection;
};

// Defaults are NemotronHConfig's. transformers builds one shared expert whatever
// n_shared_experts says, and moe_shared_expert_overlap only schedules training.
MoeConfig moe_config(const Config& c, int64_t D) {
  MoeConfig m;
  m.experts = positive_or(c, "n_routed_experts", 8);
  m.intermediate = positive_or(c, "moe_intermediate_size", 7688);
  m.shared_intermediate = positive_or(c, "moe_shared_expert_intermediate_size", 7688);
  m.latent_projection = c.has("moe_latent_size");
  m.latent = positive_or(c, "moe_latent_size", D);
  m.router.num_experts_per_tok = positive_or(c, "num_experts_per_tok", 2);
  m.router.n_group = positive_or(c, "n_group", 1);
  m.router.topk_group = positive_or(c, "topk_group", 1);
  m.router.norm_topk_prob = c.get_or<bool>("norm_topk_prob", true);
  m.router.routed_scaling_factor = static_cast<float>(c.get_or<double>("routed_scaling_factor", 1.0));
  return m;
}

std::unique_ptr<FeedForward> load_moe(const Config& c, const MoeConfig& mc, const Checkpoint& w,
                                      const std::string& p, int64_t D, Activation act) {
  const int64_t E = mc.experts, I = mc.intermediate, S = mc.shared_intermediate, L = mc.latent;
  GroupLimitedRouter r = mc.router;
  r.weight = matrix(w, p + "gate.weight", E, D);
  r.correction_bias = f32(w, p + "gate.e_score_correction_bias", Shape{E});
  Tensor latent_in, latent_out;
  if (mc.latent_projection) {
    latent_in = matrix(w, p + "fc1_latent_proj.weight", L, D);
    latent_out = matrix(w, p + "fc2_latent_proj.weight", D, L);
  }
  // The routed experts, each [I, L] up and [L, I] down: the hub's tensor per expert
  // (experts.K.up_proj.weight), or the 3-D [E, I, L] / [E, L, I] tensors transformers
  // keeps in memory (experts.up_proj), sliced per expert without a copy.
  const std::string x = p + "experts.";
  std::vector<std::unique_ptr<FeedForward>> experts;
  if (w.contains(x + "up_proj") || w.contains(x + "down_proj")) {
    const Tensor up = w.get_float(x + "up_proj", Shape{E, I, L}), down = w.get_float(x + "down_proj", Shape{E, L, I});
    for (int64_t e = 0; e < E; ++e) experts.push_back(make_plain_mlp(up.select(0, e), down.select(0, e), act));
  } else {
    for (int64_t e = 0; e < E; ++e) {
      const std::string q = x + std::to_string(e) + ".";
      experts.push_back(
          make_plain_mlp(matrix(w, q + "up_proj.weight", I, L), matrix(w, q + "down_proj.weight", L, I), act));
    }
  }
  auto shared = make_plain_mlp(matrix(w, p + "shared_experts.up_proj.weight", S, D),
                               matrix(w, p + "shared_experts.down_proj.weight", D, S), act);
  try {
    return make_group_limited_moe(std::move(r), std::move(experts), std::move(latent_in), std::move(latent_out),
                                  std::move(shared));
  } catch (const Error& e) {
    throw Error(c.path() + ": " + e.what());  // the tensors' shapes were checked: it is the routing fields
  }
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
  const Activation act = activation(c, "mlp_hidden_act", "relu2");
  const std::optional<MoeConfig> moe =
      types.end() != std::find(types.begin(), types.end(), "moe") ? std::optional(moe_config(c, D)) : std::nullopt;

  // save_pretrained writes the hub's names (backbone., one tensor per expert); with
  // save_original_format=False, transformers' own (model., experts fused).
  const std::string root =
      w.contains("model.embeddings.weight") && !w.contains("backbone.embeddings.weight") ? "model." : "backbone.";
  DecoderSpec spec;
  spec.architecture = "NemotronHForCausalLM";
  embedding_and_head(c, w, root + "embeddings.weight", /*tied_default=*/false, spec);
  for (size_t l = 0; l < types.size(); ++l) {
    const std::string p = root + "layers." + std::to_string(l) + ".";
    Block b;
    b.kind = types[l] == "mamba" ? "mamba2" : types[l];
    const Norm norm = rms_norm(w, p + "norm.weight", D, eps);
    if (types[l] == "mlp") {
      b.mlp_norm = norm;
      b.mlp = make_plain_mlp(matrix(w, p + "mixer.up_proj.weight", F, D), matrix(w, p + "mixer.down_proj.weight", D, F), act);
    } else if (types[l] == "moe") {
      b.mlp_norm = norm;
      b.mlp = load_moe(c, *moe, w, p + "mixer.", D, act);
    } else {
      b.mixer_norm = norm;
      b.mixer = types[l] == "mamba" ? load_mamba2_mixer(mc, w, p + "mixer.", proj_bias, conv_bias)
                                    : load_attention(ac, w, p + "mixer.", attn_bias, options);
    }
    spec.blocks.push_back(std::move(b));
  }
  spec.final_norm = rms_norm(w, root + "norm_f.weight", D, eps);
  return spec;
}

}  // namespace subq::models
