// Mamba2ForCausalLM (transformers/models/mamba2): backbone.embeddings, per layer
// x + Mamba2Mixer(RMSNorm(x)), backbone.norm_f, lm_head (untied by default).
#include "src/models/architectures.h"
#include "src/models/weights.h"

namespace subq::models {

std::unique_ptr<Mixer> load_mamba2_mixer(const mixers::Mamba2Config& mc, const Checkpoint& w,
                                         const std::string& m, bool proj_bias, bool conv_bias) {
  const int64_t D = mc.hidden_size, I = mc.intermediate_size(), H = mc.num_heads;
  mixers::Mamba2Weights mw;
  mw.in_proj_weight = matrix(w, m + "in_proj.weight", mc.in_proj_size(), D);
  if (proj_bias) {
    mw.in_proj_bias = w.get_float(m + "in_proj.bias", Shape{mc.in_proj_size()});
    mw.out_proj_bias = w.get_float(m + "out_proj.bias", Shape{D});
  }
  mw.conv1d_weight = w.get_float(m + "conv1d.weight", Shape{mc.conv_dim(), 1, mc.conv_kernel});
  if (conv_bias) mw.conv1d_bias = w.get_float(m + "conv1d.bias", Shape{mc.conv_dim()});
  mw.dt_bias = w.get_float(m + "dt_bias", Shape{H});
  mw.A_log = w.get_float(m + "A_log", Shape{H});
  mw.D = w.get_float(m + "D", Shape{H});
  mw.norm_weight = w.get_float(m + "norm.weight", Shape{I});
  mw.out_proj_weight = matrix(w, m + "out_proj.weight", D, I);
  return std::make_unique<mixers::Mamba2Mixer>(mc, mw);
}

void read_time_step_limit(const Config& c, const std::string& field, mixers::Mamba2Config& mc) {
  if (!c.has(field)) return;
  const auto lim = c.get<std::vector<double>>(field);
  if (lim.size() != 2 || !(lim[0] <= lim[1]))
    throw Error(c.path() + ": field '" + field + "' must be [min, max] with min <= max");
  mc.time_step_limit_min = static_cast<float>(lim[0]);
  mc.time_step_limit_max = static_cast<float>(lim[1]);
}

DecoderSpec build_mamba2(const Config& c, const Checkpoint& w, const LoadOptions&) {
  const int64_t D = positive(c, "hidden_size");
  mixers::Mamba2Config mc;
  mc.hidden_size = D;
  mc.num_heads = positive(c, "num_heads");
  mc.head_dim = c.has("head_dim") ? positive(c, "head_dim") : 64;
  mc.n_groups = c.has("n_groups") ? positive(c, "n_groups") : 8;
  mc.state_size = c.has("state_size") ? positive(c, "state_size") : 128;
  mc.conv_kernel = c.has("conv_kernel") ? positive(c, "conv_kernel") : 4;
  mc.layer_norm_epsilon = static_cast<float>(c.get_or<double>("layer_norm_epsilon", 1e-5));
  read_time_step_limit(c, "time_step_limit", mc);
  const int64_t expanded = static_cast<int64_t>(c.get_or<double>("expand", 2.0) * static_cast<double>(D));
  if (expanded != mc.intermediate_size())
    throw Error(c.path() + ": expand * hidden_size = " + std::to_string(expanded) + " but num_heads * head_dim = " +
                std::to_string(mc.intermediate_size()));
  if (mc.num_heads % mc.n_groups != 0)
    throw Error(c.path() + ": num_heads (" + std::to_string(mc.num_heads) + ") must be a multiple of n_groups (" +
                std::to_string(mc.n_groups) + ")");
  const std::string act = c.get_or<std::string>("hidden_act", "silu");
  if (act != "silu") throw Error(c.path() + ": field 'hidden_act' must be \"silu\" for Mamba-2, found \"" + act + "\"");
  const bool proj_bias = c.get_or<bool>("use_bias", false), conv_bias = c.get_or<bool>("use_conv_bias", true);
  const double eps = c.get_or<double>("layer_norm_epsilon", 1e-5);

  DecoderSpec spec;
  spec.architecture = "Mamba2ForCausalLM";
  // Mamba2Config defaults to untied embeddings, unlike PretrainedConfig.
  embedding_and_head(c, w, "backbone.embeddings.weight", /*tied_default=*/false, spec);
  for (int64_t l = 0; l < positive(c, "num_hidden_layers"); ++l) {
    const std::string p = "backbone.layers." + std::to_string(l) + ".";
    Block b;
    b.kind = "mamba2";
    b.mixer_norm = rms_norm(w, p + "norm.weight", D, eps);
    b.mixer = load_mamba2_mixer(mc, w, p + "mixer.", proj_bias, conv_bias);
    spec.blocks.push_back(std::move(b));
  }
  spec.final_norm = rms_norm(w, "backbone.norm_f.weight", D, eps);
  return spec;
}

}  // namespace subq::models
