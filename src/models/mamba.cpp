// MambaForCausalLM (transformers/models/mamba): backbone.embeddings, per layer
// x + MambaMixer(RMSNorm(x)), backbone.norm_f, lm_head (tied by default).
#include <cmath>

#include "src/mixers/mamba_mixer.h"
#include "src/models/architectures.h"
#include "src/models/weights.h"

namespace subq::models {

MambaWeights load_mamba_weights(const MambaConfig& mc, const Checkpoint& w, const std::string& m) {
  const int64_t D = mc.d_model, I = mc.d_inner, N = mc.d_state, R = mc.dt_rank;
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
  if (mc.inner_norms) {
    mw.dt_norm = w.get_float(m + "dt_layernorm.weight", Shape{R});
    mw.b_norm = w.get_float(m + "b_layernorm.weight", Shape{N});
    mw.c_norm = w.get_float(m + "c_layernorm.weight", Shape{N});
  }
  return mw;
}

DecoderSpec build_mamba(const Config& c, const Checkpoint& w, const LoadOptions&) {
  const int64_t D = positive(c, "hidden_size");
  const int64_t layers = positive(c, "num_hidden_layers");
  const int64_t d_inner = c.has("intermediate_size") ? positive(c, "intermediate_size")
                                                     : static_cast<int64_t>(c.get_or<double>("expand", 2.0) * D);
  const std::string act = c.get_or<std::string>("hidden_act", "silu");
  if (act != "silu") throw Error(c.path() + ": field 'hidden_act' must be \"silu\" for Mamba, found \"" + act + "\"");
  MambaConfig mc;
  mc.d_model = D;
  mc.d_inner = d_inner;
  mc.d_state = positive(c, "state_size");
  mc.d_conv = positive(c, "conv_kernel");
  mc.dt_rank = dt_rank(c, "time_step_rank", D);
  mc.conv_bias = c.get_or<bool>("use_conv_bias", true);
  mc.proj_bias = c.get_or<bool>("use_bias", false);
  const double eps = c.get_or<double>("layer_norm_epsilon", 1e-5);

  DecoderSpec spec;
  spec.architecture = "MambaForCausalLM";
  embedding_and_head(c, w, "backbone.embeddings.weight", /*tied_default=*/true, spec);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "backbone.layers." + std::to_string(l) + ".";
    Block b;
    b.kind = "mamba";
    b.mixer_norm = rms_norm(w, p + "norm.weight", D, eps);
    b.mixer = std::make_unique<MambaMixer>(mc, load_mamba_weights(mc, w, p + "mixer."));
    spec.blocks.push_back(std::move(b));
  }
  spec.final_norm = rms_norm(w, "backbone.norm_f.weight", D, eps);
  return spec;
}

}  // namespace subq::models
