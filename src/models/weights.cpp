#include "src/models/weights.h"

#include "subq/ops.h"

namespace subq::models {

Tensor matrix(const Checkpoint& w, const std::string& name, int64_t rows, int64_t cols) {
  return w.get_float(name, Shape{rows, cols});
}

Tensor f32(const Checkpoint& w, const std::string& name, const Shape& shape) {
  const Tensor t = w.get_float(name, shape);
  Tensor out = Tensor::empty(DType::f32, shape);
  convert(t.is_contiguous() ? t : t.contiguous(), out);
  return out;
}

Tensor optional_f32(const Checkpoint& w, const std::string& name, const Shape& shape) {
  return w.contains(name) ? f32(w, name, shape) : Tensor();
}

Norm rms_norm(const Checkpoint& w, const std::string& name, int64_t dim, double eps) {
  Norm n;
  n.weight = f32(w, name, Shape{dim});
  n.eps = static_cast<float>(eps);
  return n;
}

void embedding_and_head(const Config& c, const Checkpoint& w, const std::string& embedding_name, bool tied_default,
                        DecoderSpec& spec) {
  const int64_t V = positive(c, "vocab_size"), D = positive(c, "hidden_size");
  spec.embedding = w.get_float(embedding_name, Shape{V, D});
  spec.head = c.get_or<bool>("tie_word_embeddings", tied_default) ? spec.embedding
                                                                   : w.get_float("lm_head.weight", Shape{V, D});
}

int64_t positive(const Config& c, const std::string& field) {
  const int64_t v = c.get<int64_t>(field);
  if (v <= 0) throw Error(c.path() + ": field '" + field + "' must be positive, found " + std::to_string(v));
  return v;
}

Activation activation(const Config& c, const std::string& field, const std::string& fallback) {
  try {
    return parse_activation(c.get_or<std::string>(field, fallback));
  } catch (const Error& e) {
    throw Error(c.path() + ": field '" + field + "': " + e.what());
  }
}

int64_t dt_rank(const Config& c, const std::string& field, int64_t d_model) {
  if (!c.has(field)) return (d_model + 15) / 16;
  try {
    return positive(c, field);
  } catch (const Error&) {
    if (c.get<std::string>(field) != "auto")
      throw Error(c.path() + ": field '" + field + "' must be a positive integer or \"auto\"");
  }
  return (d_model + 15) / 16;
}

}  // namespace subq::models
