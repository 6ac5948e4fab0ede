// subq public API: a Session runs text through a loaded model — chunked prefill, token
// by token decoding with sampling, stop strings, streaming text out, state save/load —
// and scores text (perplexity).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "subq/io.h"
#include "subq/model.h"

namespace subq {

struct SamplingParams {
  float temperature = 0.f;         // 0: greedy (argmax)
  int64_t top_k = 0;               // 0: off
  float top_p = 1.f;               // 1: off; keep the smallest prefix with mass >= top_p
  float min_p = 0.f;               // 0: off; drop tokens with p < min_p * p_max
  float repetition_penalty = 1.f;  // 1: off; as transformers: logit / r if > 0 else logit * r
  uint64_t seed = 0;
};

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;  // generation ends when the text ends with any of these
  bool stop_at_eos = true;        // the tokenizer's end-of-sequence token, if it has one
  int64_t prefill_chunk = 512;    // tokens per forward during prefill (bounds activations)
};

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t new_tokens = 0;
  double prefill_s = 0;
  double decode_s = 0;
  std::string stop_reason;  // "length", "eos" or "stop string"
};

// Called with (tokens done, tokens total) during long prefill or scoring.
using Progress = std::function<void(int64_t done, int64_t total)>;

class Session {
 public:
  Session(const Model& model, Tokenizer tokenizer);

  const Model& model() const { return *model_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  ModelState& state() { return *state_; }
  void reset();

  // Feeds tokens in chunks of at most `chunk`. The logits after the last token are kept
  // for the next generate step; if all_logits is given, every position's logits are
  // appended to it (T x V floats).
  void feed(std::span<const int32_t> tokens, int64_t chunk, std::vector<float>* all_logits = nullptr,
            const Progress& progress = nullptr);
  // Tokenizes `prompt` (special tokens only where the tokenizer's post-processor adds
  // them), feeds it, then samples up to max_new_tokens, passing each piece of decoded
  // text to on_text as soon as it is complete UTF-8.
  GenerateStats generate(const std::string& prompt, const GenerateOptions& options,
                         const std::function<void(std::string_view)>& on_text, std::vector<float>* all_logits = nullptr,
                         const Progress& progress = nullptr);

  void save(const std::string& path) const { model_->save_state(*state_, path); }
  void load(const std::string& path) { state_ = model_->load_state(path); }

 private:
  const Model* model_;
  Tokenizer tokenizer_;
  std::unique_ptr<ModelState> state_;
  std::vector<float> last_logits_;
  std::vector<int32_t> history_;
};

struct PerplexityResult {
  double perplexity = 0;
  double mean_nll = 0;
  int64_t scored_tokens = 0;
};

// Perplexity of `tokens` in consecutive windows of `ctx` tokens, each from a fresh state;
// every token but the first of each window is scored. all_logits as in Session::feed.
PerplexityResult perplexity(const Model& model, std::span<const int32_t> tokens, int64_t ctx,
                            std::vector<float>* all_logits = nullptr, const Progress& progress = nullptr);

}  // namespace subq
