// Loading of Llama-style attention layers, shared by Llama, Nemotron-H and Bamba.
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

void read_rope(const Config& c, AttentionConfig& ac) {
  double theta = 10000.0, partial = 1.0;
  std::string type = "default";
  if (c.has("rope_parameters")) {
    const Config r = c.object("rope_parameters");
    theta = r.get_or<double>("rope_theta", theta);
    partial = r.get_or<double>("partial_rotary_factor", partial);
    type = r.get_or<std::string>("rope_type", type);
  } else {
    theta = c.get_or<double>("rope_theta", theta);
    partial = c.get_or<double>("partial_rotary_factor", partial);
    if (c.has("rope_scaling")) {
      const Config r = c.object("rope_scaling");
      type = r.has("rope_type") ? r.get<std::string>("rope_type") : r.get_or<std::string>("type", "default");
    }
  }
  if (type != "default")
    throw Error(c.path() + ": rope type \"" + type + "\" is not supported (only the default rotary embedding is)");
  if (!(theta > 0) || !(partial > 0 && partial <= 1))
    throw Error(c.path() + ": rope_theta must be > 0 and partial_rotary_factor in (0, 1]");
  ac.rope_theta = static_cast<float>(theta);
  ac.rotary_dim = static_cast<int64_t>(static_cast<double>(ac.head_dim) * partial);
  ac.rotary_dim -= ac.rotary_dim % 2;
}

std::unique_ptr<Mixer> load_attention(const AttentionConfig& ac, const Checkpoint& w, const std::string& p, bool bias) {
  if (bias) throw Error(w.path() + ": attention with biases (attention_bias = true) is not supported");
  const int64_t D = ac.d_model, q = ac.n_heads * ac.head_dim, kv = ac.n_kv_heads * ac.head_dim;
  AttentionWeights aw;
  aw.wq = matrix(w, p + "q_proj.weight", q, D);
  aw.wk = matrix(w, p + "k_proj.weight", kv, D);
  aw.wv = matrix(w, p + "v_proj.weight", kv, D);
  aw.wo = matrix(w, p + "o_proj.weight", D, q);
  return std::make_unique<AttentionMixer>(ac, std::move(aw));
}

}  // namespace subq::models
