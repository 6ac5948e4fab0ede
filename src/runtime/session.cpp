#include "subq/session.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "src/runtime/sampler.h"

namespace subq {
namespace {

// Decode tokens a generate() call reserves KV cache room for beyond its prompt.
constexpr int64_t kDecodeReserve = 4096;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void check_tokens(std::span<const int32_t> tokens, int64_t vocab) {
  for (int32_t t : tokens)
    if (t < 0 || t >= vocab)
      throw Error("token id " + std::to_string(t) + " is outside the model's vocabulary [0, " + std::to_string(vocab) + ")");
}

}  // namespace

Session::Session(const Model& model, Tokenizer tokenizer)
    : model_(&model), tokenizer_(std::move(tokenizer)), state_(model.new_state()) {}

void Session::reset() {
  state_ = model_->new_state();
  last_logits_.clear();
  history_.clear();
}

void Session::feed(std::span<const int32_t> tokens, int64_t chunk, std::vector<float>* all_logits,
                   const Progress& progress) {
  if (chunk < 1) throw Error("prefill chunk must be >= 1, found " + std::to_string(chunk));
  const int64_t V = model_->info().vocab_size, T = static_cast<int64_t>(tokens.size());
  check_tokens(tokens, V);
  state_->reserve(state_->position() + T);
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t n = std::min(chunk, T - t0);
    const auto piece = tokens.subspan(static_cast<size_t>(t0), static_cast<size_t>(n));
    Tensor logits = Tensor::empty(DType::f32, {all_logits ? n : 1, V});
    model_->forward(piece, *state_, logits);
    const float* p = logits.data<float>();
    if (all_logits) all_logits->insert(all_logits->end(), p, p + n * V);
    last_logits_.assign(p + (logits.dim(0) - 1) * V, p + logits.dim(0) * V);
    history_.insert(history_.end(), piece.begin(), piece.end());
    if (progress) progress(t0 + n, T);
  }
}

GenerateStats Session::generate(const std::string& prompt, const GenerateOptions& o,
                                const std::function<void(std::string_view)>& on_text, std::vector<float>* all_logits,
                                const Progress& progress) {
  if (o.max_new_tokens < 0) throw Error("max new tokens must be >= 0");
  Sampler sampler(o.sampling);
  GenerateStats stats;
  const std::vector<int32_t> ids = tokenizer_.encode(prompt);
  if (ids.empty() && last_logits_.empty()) throw Error("the prompt is empty and there is no state to continue from");
  stats.prompt_tokens = static_cast<int64_t>(ids.size());
  // Room for the prompt and the tokens to come (up to kDecodeReserve of them, so that a
  // large -n does not claim memory a stop may never use): a KV cache that doubles on the
  // first decode step after a long prompt copies itself there (1.2 s after 16K tokens of
  // Llama-160M on a 2-core VM).
  state_->reserve(state_->position() + stats.prompt_tokens + std::min(o.max_new_tokens, kDecodeReserve));
  double t0 = now_s();
  feed(ids, o.prefill_chunk, all_logits, progress);
  stats.prefill_s = now_s() - t0;

  const auto& eos = model_->info().eos_token_ids;
  TokenDecoder decoder(tokenizer_, /*skip_special_tokens=*/true);
  // Generated text; text[0, emitted) has been passed to on_text. Text that could be the
  // start of a stop string is held back until it is known not to be one.
  std::string text;
  size_t emitted = 0;
  auto emit_until = [&](size_t end) {
    if (end > emitted) on_text(std::string_view(text).substr(emitted, end - emitted));
    emitted = std::max(emitted, end);
  };
  stats.stop_reason = "length";
  t0 = now_s();
  for (int64_t i = 0; i < o.max_new_tokens && stats.stop_reason == "length"; ++i) {
    const int32_t next = sampler.sample(last_logits_, history_);
    if (o.stop_at_eos && std::find(eos.begin(), eos.end(), next) != eos.end()) {
      stats.stop_reason = "eos";
      break;
    }
    ++stats.new_tokens;
    text += decoder.push(next);
    size_t hold = 0;
    for (const auto& stop : o.stop) {
      if (stop.empty()) continue;
      const size_t at = text.find(stop, emitted);
      if (at != std::string::npos) {
        emit_until(at);
        stats.stop_reason = "stop string";
        break;
      }
      for (size_t k = std::min(stop.size() - 1, text.size() - emitted); k > hold; --k)
        if (text.compare(text.size() - k, k, stop, 0, k) == 0) {
          hold = k;
          break;
        }
    }
    if (stats.stop_reason != "length") break;
    emit_until(text.size() - hold);
    const int32_t one[1] = {next};
    feed(one, 1, all_logits);
  }
  if (stats.stop_reason != "stop string") {
    text += decoder.finish();
    emit_until(text.size());
  }
  stats.decode_s = now_s() - t0;
  return stats;
}

PerplexityResult perplexity(const Model& model, std::span<const int32_t> tokens, int64_t ctx,
                            std::vector<float>* all_logits, const Progress& progress) {
  if (ctx < 2) throw Error("perplexity: context must be >= 2 tokens, found " + std::to_string(ctx));
  const int64_t T = static_cast<int64_t>(tokens.size()), V = model.info().vocab_size;
  if (T < 2) throw Error("perplexity: the text has fewer than 2 tokens");
  check_tokens(tokens, V);
  PerplexityResult r;
  double nll = 0;
  for (int64_t w0 = 0; w0 < T; w0 += ctx) {
    const int64_t n = std::min(ctx, T - w0);
    auto state = model.new_state();
    Tensor logits = Tensor::empty(DType::f32, {n, V});
    model.forward(tokens.subspan(static_cast<size_t>(w0), static_cast<size_t>(n)), *state, logits);
    const float* p = logits.data<float>();
    if (all_logits) all_logits->insert(all_logits->end(), p, p + n * V);
    for (int64_t t = 0; t + 1 < n; ++t) {
      const float* row = p + t * V;
      const double mx = *std::max_element(row, row + V);
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
      nll += mx + std::log(sum) - row[tokens[static_cast<size_t>(w0 + t + 1)]];
      ++r.scored_tokens;
    }
    if (progress) progress(w0 + n, T);
  }
  if (r.scored_tokens == 0) throw Error("perplexity: no token could be scored (context windows of 1 token)");
  r.mean_nll = nll / static_cast<double>(r.scored_tokens);
  r.perplexity = std::exp(r.mean_nll);
  return r;
}

}  // namespace subq
