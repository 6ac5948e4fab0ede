// Loading of Llama-style attention layers, shared by Llama, Nemotron-H and Bamba.
#include <cmath>
#include <optional>

#include "src/models/architectures.h"
#include "src/models/weights.h"

namespace subq::models {

AttentionConfig attention_config(const Config& c, const LoadOptions& options) {
  AttentionConfig ac;
  ac.d_model = positive(c, "hidden_size");
  ac.n_heads = positive(c, "num_attention_heads");
  ac.n_kv_heads = c.has("num_key_value_heads") ? positive(c, "num_key_value_heads") : ac.n_heads;
  ac.head_dim = c.has("head_dim") ? positive(c, "head_dim") : ac.d_model / ac.n_heads;
  if (ac.n_heads % ac.n_kv_heads != 0)
    throw Error(c.path() + ": num_attention_heads (" + std::to_string(ac.n_heads) +
                ") must be a multiple of num_key_value_heads (" + std::to_string(ac.n_kv_heads) + ")");
  if (!options.sparse.empty()) ac.sparse = attn::parse_selector(options.sparse);
  return ac;
}

namespace {

// transformers' YaRN attention factor when the config gives none: 0.1 m ln(factor) + 1.
double yarn_mscale(double factor, double m) { return factor <= 1 ? 1.0 : 0.1 * m * std::log(factor) + 1.0; }

double required_positive(const Config& c, const std::string& field) {
  if (!c.has(field)) throw Error(c.path() + "." + field + ": missing (needed by this rope type)");
  const double v = c.get<double>(field);
  if (!(v > 0) || !std::isfinite(v)) throw Error(c.path() + "." + field + ": must be positive, found " + std::to_string(v));
  return v;
}

}  // namespace

void read_rope(const Config& c, AttentionConfig& ac) {
  RopeSpec& r = ac.rope;
  double partial = 1.0;
  // Scaling parameters sit in rope_parameters (transformers >= 5, with rope_theta) or in
  // rope_scaling beside a top-level rope_theta (older configs).
  std::optional<Config> params;
  if (c.has("rope_parameters")) {
    params = c.object("rope_parameters");
    r.theta = params->get_or<double>("rope_theta", c.get_or<double>("rope_theta", r.theta));
    partial = params->get_or<double>("partial_rotary_factor", c.get_or<double>("partial_rotary_factor", partial));
  } else {
    r.theta = c.get_or<double>("rope_theta", r.theta);
    partial = c.get_or<double>("partial_rotary_factor", partial);
    if (c.has("rope_scaling")) params = c.object("rope_scaling");
  }
  const std::string type = !params ? "default"
                           : params->has("rope_type") ? params->get<std::string>("rope_type")
                                                      : params->get_or<std::string>("type", "default");
  if (!(r.theta > 0) || !(partial > 0 && partial <= 1))
    throw Error(c.path() + ": rope_theta must be > 0 and partial_rotary_factor in (0, 1]");
  r.rotary_dim = static_cast<int64_t>(static_cast<double>(ac.head_dim) * partial);
  r.rotary_dim -= r.rotary_dim % 2;
  if (type == "default") return;

  // The pretraining context the llama3 and yarn bands are measured against.
  const auto original_context = [&] {
    if (params->has("original_max_position_embeddings"))
      return required_positive(*params, "original_max_position_embeddings");
    if (c.has("original_max_position_embeddings")) return required_positive(c, "original_max_position_embeddings");
    return required_positive(c, "max_position_embeddings");
  };
  if (type == "linear") {
    r.type = RopeSpec::Type::linear;
    r.factor = required_positive(*params, "factor");
  } else if (type == "llama3") {
    r.type = RopeSpec::Type::llama3;
    r.factor = required_positive(*params, "factor");
    r.low_freq_factor = required_positive(*params, "low_freq_factor");
    r.high_freq_factor = required_positive(*params, "high_freq_factor");
    r.original_max_positions = original_context();
  } else if (type == "yarn") {
    r.type = RopeSpec::Type::yarn;
    r.original_max_positions = original_context();
    r.factor = params->has("factor") ? required_positive(*params, "factor")
                                     : required_positive(c, "max_position_embeddings") / r.original_max_positions;
    // transformers treats 0 like absent for these (`get(...) or default`).
    const double beta_fast = params->get_or<double>("beta_fast", 0), beta_slow = params->get_or<double>("beta_slow", 0);
    r.beta_fast = beta_fast != 0 ? beta_fast : 32.0;
    r.beta_slow = beta_slow != 0 ? beta_slow : 1.0;
    r.truncate = params->get_or<bool>("truncate", true);
    const double mscale = params->get_or<double>("mscale", 0), mscale_all = params->get_or<double>("mscale_all_dim", 0);
    if (params->has("attention_factor")) r.attention_factor = required_positive(*params, "attention_factor");
    else if (mscale != 0 && mscale_all != 0) r.attention_factor = yarn_mscale(r.factor, mscale) / yarn_mscale(r.factor, mscale_all);
    else r.attention_factor = yarn_mscale(r.factor, 1.0);
  } else {
    throw Error(c.path() + ": rope type \"" + type +
                "\" is not supported (supported: default, linear, llama3, yarn; \"dynamic\" NTK scaling changes "
                "the frequencies with the sequence length and is not)");
  }
  try {
    rope_table(r);  // validates the parameters at load time, naming the config
  } catch (const Error& e) {
    throw Error(c.path() + ": " + e.what());
  }
}

std::unique_ptr<Mixer> load_attention(const AttentionConfig& config, const Checkpoint& w, const std::string& p,
                                      bool bias, const LoadOptions& options) {
  AttentionConfig ac = config;
  const int64_t D = ac.d_model, q = ac.n_heads * ac.head_dim, kv = ac.n_kv_heads * ac.head_dim;
  AttentionWeights aw;
  aw.wq = matrix(w, p + "q_proj.weight", q, D);
  aw.wk = matrix(w, p + "k_proj.weight", kv, D);
  aw.wv = matrix(w, p + "v_proj.weight", kv, D);
  aw.wo = matrix(w, p + "o_proj.weight", D, q);
  if (bias) {  // attention_bias: all four projections (Llama, Bamba, Nemotron-H)
    aw.bq = f32(w, p + "q_proj.bias", {q});
    aw.bk = f32(w, p + "k_proj.bias", {kv});
    aw.bv = f32(w, p + "v_proj.bias", {kv});
    aw.bo = f32(w, p + "o_proj.bias", {D});
  }
  // By default K/V keep the checkpoint's precision, as transformers keeps them: a bf16
  // checkpoint gets a bf16 cache (half the bytes per decoded key). f32 and f16 checkpoints
  // keep f32: a bf16 cache would hold K/V less precisely than an f16 model computes them.
  const bool bf16_weights = aw.wq.dtype() == DType::bf16 && aw.wk.dtype() == DType::bf16 &&
                            aw.wv.dtype() == DType::bf16 && aw.wo.dtype() == DType::bf16;
  if (options.kv_cache == "f32") ac.kv_dtype = DType::f32;  // Model::load checked the value
  else if (options.kv_cache == "bf16") ac.kv_dtype = DType::bf16;
  else ac.kv_dtype = bf16_weights ? DType::bf16 : DType::f32;
  return std::make_unique<AttentionMixer>(ac, std::move(aw));
}

}  // namespace subq::models
