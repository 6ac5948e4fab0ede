#include "src/models/decoder.h"

#include <algorithm>

#include "src/core/parallel.h"
#include "src/io/writers.h"
#include "subq/io.h"
#include "subq/ops.h"

namespace subq {

void Norm::apply(const Tensor& x, const Tensor& y) const {
  if (layer_norm) subq::layer_norm(x, weight, bias, eps, y);
  else rms_norm(x, weight, eps, y);
}

std::string state_fingerprint(const ModelInfo& info) {
  std::string f = info.architecture + " d=" + std::to_string(info.d_model) + " V=" + std::to_string(info.vocab_size) +
                  " layers=";
  for (const auto& k : info.layers) f += k + ",";
  return f;
}

void write_state_file(const std::string& path, const std::string& fingerprint, int64_t position,
                      const std::vector<std::vector<Tensor>>& layers) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (size_t l = 0; l < layers.size(); ++l)
    for (size_t i = 0; i < layers[l].size(); ++i)
      tensors.emplace_back("layer." + std::to_string(l) + "." + std::to_string(i), layers[l][i]);
  io::write_safetensors(path, tensors,
                        {{"format", "subq-state-1"}, {"model", fingerprint}, {"position", std::to_string(position)}});
}

StateFile read_state_file(const std::string& path, const std::string& fingerprint, const std::vector<bool>& stateful) {
  StateFile out{SafetensorsFile::open(path), 0, {}};
  const auto& meta = out.file.metadata();
  auto field = [&](const char* key) {
    const auto it = meta.find(key);
    if (it == meta.end()) throw Error(path + ": not a subq state file (metadata '" + key + "' missing)");
    return it->second;
  };
  if (field("format") != "subq-state-1") throw Error(path + ": unsupported state format '" + field("format") + "'");
  if (field("model") != fingerprint)
    throw Error(path + ": state was saved for another model (" + field("model") + "), this is " + fingerprint);
  try {
    out.position = std::stoll(field("position"));
  } catch (const std::exception&) {
    throw Error(path + ": metadata 'position' is not an integer");
  }
  if (out.position < 0) throw Error(path + ": metadata 'position' is negative");
  size_t used = 0;
  out.layers.resize(stateful.size());
  for (size_t l = 0; l < stateful.size(); ++l) {
    if (!stateful[l]) continue;
    const std::string prefix = "layer." + std::to_string(l) + ".";
    for (size_t i = 0; out.file.contains(prefix + std::to_string(i)); ++i)
      out.layers[l].push_back(out.file.get(prefix + std::to_string(i)));
    used += out.layers[l].size();
  }
  if (used != out.file.names().size()) throw Error(path + ": holds tensors that belong to no layer");
  return out;
}

namespace {

class DecoderState final : public ModelState {
 public:
  std::vector<std::unique_ptr<MixerState>> layers;  // null where a block has no mixer
  int64_t position_ = 0;

  int64_t position() const override { return position_; }
  size_t state_bytes() const override {
    size_t n = 0;
    for (const auto& s : layers)
      if (s) n += s->state_bytes();
    return n;
  }
  void reserve(int64_t tokens) override {
    for (const auto& s : layers)
      if (s) s->reserve(tokens);
  }
};

void add_into(const Tensor& x, const Tensor& y) {
  float* a = x.mutable_data<float>();
  const float* b = y.data<float>();
  parallel_for(x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) a[i] += b[i];
  });
}

class Decoder final : public Model {
 public:
  Decoder(DecoderSpec spec, ModelInfo info) : spec_(std::move(spec)), info_(std::move(info)) {}

  const ModelInfo& info() const override { return info_; }

  std::unique_ptr<ModelState> new_state() const override {
    auto s = std::make_unique<DecoderState>();
    for (const auto& b : spec_.blocks) s->layers.push_back(b.mixer ? b.mixer->new_state(1) : nullptr);
    return s;
  }

  void save_state(const ModelState& base, const std::string& path) const override {
    const DecoderState& state = own(base, "save state");
    std::vector<std::vector<Tensor>> layers;
    for (const auto& s : state.layers) layers.push_back(s ? s->snapshot() : std::vector<Tensor>{});
    write_state_file(path, state_fingerprint(info_), state.position_, layers);
  }

  std::unique_ptr<ModelState> load_state(const std::string& path) const override {
    std::vector<bool> stateful;
    for (const auto& b : spec_.blocks) stateful.push_back(b.mixer != nullptr);
    const StateFile file = read_state_file(path, state_fingerprint(info_), stateful);
    auto state = std::unique_ptr<DecoderState>(static_cast<DecoderState*>(new_state().release()));
    state->position_ = file.position;
    for (size_t l = 0; l < state->layers.size(); ++l) {
      if (!state->layers[l]) continue;
      try {
        state->layers[l]->restore(file.layers[l]);
      } catch (const Error& e) {
        throw Error(path + ": layer " + std::to_string(l) + ": " + e.what());
      }
    }
    return state;
  }

  void forward(std::span<const int32_t> tokens, ModelState& base, const Tensor& logits) const override {
    DecoderState* state = &own(base, "model forward");
    const int64_t T = static_cast<int64_t>(tokens.size()), D = info_.d_model, V = info_.vocab_size;
    if (T == 0) throw Error("model forward: no tokens");
    check_dtype(logits, DType::f32, "model forward: logits");
    if (!(logits.shape() == Shape{T, V}) && !(logits.shape() == Shape{1, V}))
      throw Error("model forward: logits must be [" + std::to_string(T) + ", " + std::to_string(V) + "] or [1, " +
                  std::to_string(V) + "], found " + logits.str());

    Tensor ids = Tensor::empty(DType::i32, {T});
    std::copy(tokens.begin(), tokens.end(), ids.mutable_data<int32_t>());
    Tensor x = Tensor::empty(DType::f32, {T, D});
    embedding(ids, spec_.embedding, x);
    if (spec_.embedding_scale != 1.f) {
      float* p = x.mutable_data<float>();
      for (int64_t i = 0; i < T * D; ++i) p[i] *= spec_.embedding_scale;
    }
    Tensor h = Tensor::empty(DType::f32, {T, D}), y = Tensor::empty(DType::f32, {T, D});
    for (size_t l = 0; l < spec_.blocks.size(); ++l) {
      const Block& b = spec_.blocks[l];
      if (b.mixer) {
        b.mixer_norm.apply(x, h);
        b.mixer->forward(h.view({1, T, D}), *state->layers[l], y.view({1, T, D}));
        add_into(x, y);
      }
      if (b.mlp) {
        b.mlp_norm.apply(x, h);
        b.mlp->forward(h, y);
        add_into(x, y);
      }
    }
    const Tensor rows = logits.dim(0) == T ? x : x.slice(0, T - 1, T).contiguous();
    const Tensor normed = Tensor::empty(DType::f32, rows.shape());
    spec_.final_norm.apply(rows, normed);
    linear(normed, spec_.head, Tensor(), logits);
    state->position_ += T;
  }

 private:
  const DecoderState& own(const ModelState& base, const char* who) const {
    auto* state = dynamic_cast<const DecoderState*>(&base);
    if (!state || state->layers.size() != spec_.blocks.size())
      throw Error(std::string(who) + ": the state was not made by this model");
    return *state;
  }
  DecoderState& own(ModelState& base, const char* who) const {
    return const_cast<DecoderState&>(own(static_cast<const ModelState&>(base), who));
  }

  DecoderSpec spec_;
  ModelInfo info_;
};

}  // namespace

ModelInfo describe(const DecoderSpec& spec, int64_t parameter_count, std::string weight_dtypes) {
  if (!spec.embedding.defined() || spec.embedding.ndim() != 2) throw Error(spec.architecture + ": embedding must be [V, D]");
  if (!spec.head.defined() || !(spec.head.shape() == spec.embedding.shape()))
    throw Error(spec.architecture + ": head must match the embedding's shape " + spec.embedding.shape().str());
  ModelInfo info;
  info.architecture = spec.architecture;
  info.vocab_size = spec.embedding.dim(0);
  info.d_model = spec.embedding.dim(1);
  info.parameter_count = parameter_count;
  info.weight_dtypes = std::move(weight_dtypes);
  info.eos_token_ids = spec.eos_token_ids;
  for (const auto& b : spec.blocks) {
    if (b.mixer && b.mixer->d_model() != info.d_model)
      throw Error(spec.architecture + ": a " + b.kind + " layer has width " + std::to_string(b.mixer->d_model()) +
                  ", the model " + std::to_string(info.d_model));
    info.layers.push_back(b.kind);
  }
  return info;
}

std::unique_ptr<Model> make_decoder(DecoderSpec spec, int64_t parameter_count, std::string weight_dtypes) {
  ModelInfo info = describe(spec, parameter_count, std::move(weight_dtypes));
  return std::make_unique<Decoder>(std::move(spec), std::move(info));
}

}  // namespace subq
