// MambaForCausalLM (transformers/models/mamba): backbone.embeddings, per layer
// x + MambaMixer(RMSNorm(x)), backbone.norm_f, lm_head (tied by default).
#include <cmath>

#include "src/mixers/mamba_mixer.h"
#include "src/models/architectures.h"
#include "src/models/weights.h"

namespace subq::models {

DecoderSpec build_mamba(const Config& c, const Checkpoint& w, const LoadOptions&) {
  const int64_t D = positive(c, "hidden_size");
  const int64_t layers = positive(c, "num_hidden_layers");
  const int64_t d_inner = c.has("intermediate_size") ? positive(c, "intermediate_size")
                                                     : static_cast<int64_t>(c.get_or<double>("expand", 2.0) * D);
  // time_step_rank is an integer or "auto" (ceil(hidden_size / 16)).
  int64_t dt_rank = (D + 15) / 16;
  if (c.has("time_step_rank")) {
    try {
      dt_rank = positive(c, "time_step_rank");
    } catch (const Error&) {
      if (c.get<std::string>("time_step_rank") != "auto")
        throw Error(c.path() + ": field 'time_step_rank' must be a positive integer or \"auto\"");
    }
  }
  const std::string act = c.get_or<std::string>("hidden_act", "silu");
  if (act != "silu") throw Error(c.path() + ": field 'hidden_act' must be \"silu\" for Mamba, found \"" + act + "\"");
  MambaConfig mc;
  mc.d_model = D;
  mc.d_inner = d_inner;
  mc.d_state = positive(c, "state_size");
  mc.d_conv = positive(c, "conv_kernel");
  mc.dt_rank = dt_rank;
  mc.conv_bias = c.get_or<bool>("use_conv_bias", true);
  mc.proj_bias = c.get_or<bool>("use_bias", false);
  const double eps = c.get_or<double>("layer_norm_epsilon", 1e-5);

  DecoderSpec spec;
  spec.architecture = "MambaForCausalLM";
  embedding_and_head(c, w, "backbone.embeddings.weight", /*tied_default=*/true, spec);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "backbone.layers." + std::to_string(l) + ".";
    const std::string m = p + "mixer.";
    MambaWeights mw;
    mw.in_proj = matrix(w, m + "in_proj.weight", 2 * d_inner, D);
    if (mc.proj_bias) {
      mw.in_proj_bias = w.get_float(m + "in_proj.bias", Shape{2 * d_inner});
      mw.out_proj_bias = w.get_float(m + "out_proj.bias", Shape{D});
    }
    mw.conv_weight = w.get_float(m + "conv1d.weight", Shape{d_inner, 1, mc.d_conv});
    if (mc.conv_bias) mw.conv_bias = w.get_float(m + "conv1d.bias", Shape{d_inner});
    mw.x_proj = matrix(w, m + "x_proj.weight", dt_rank + 2 * mc.d_state, d_inner);
    mw.dt_proj = matrix(w, m + "dt_proj.weight", d_inner, dt_rank);
    mw.dt_proj_bias = w.get_float(m + "dt_proj.bias", Shape{d_inner});
    mw.A_log = w.get_float(m + "A_log", Shape{d_inner, mc.d_state});
    mw.D = w.get_float(m + "D", Shape{d_inner});
    mw.out_proj = matrix(w, m + "out_proj.weight", D, d_inner);
    Block b;
    b.kind = "mamba";
    b.mixer_norm = rms_norm(w, p + "norm.weight", D, eps);
    b.mixer = std::make_unique<MambaMixer>(mc, mw);
    spec.blocks.push_back(std::move(b));
  }
  spec.final_norm = rms_norm(w, "backbone.norm_f.weight", D, eps);
  return spec;
}

}  // namespace subq::models
