// subq run / info / perplexity: a Hugging Face model directory, used as downloaded.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "src/io/writers.h"
#include "subq/session.h"
#include "tools/subq/commands.h"
#include "tools/subq/progress.h"

namespace subq::cli {
namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return buf;
}

Tokenizer load_tokenizer(const std::string& dir) {
  const auto path = std::filesystem::path(dir) / "tokenizer.json";
  if (!std::filesystem::exists(path)) throw Error(dir + ": no tokenizer.json (subq reads byte-level BPE tokenizer.json files)");
  return Tokenizer::load(path.string());
}

void write_logits(const std::string& path, const std::vector<float>& logits, int64_t vocab) {
  const int64_t rows = static_cast<int64_t>(logits.size()) / vocab;
  io::write_npy_f32(path, logits.data(), {rows, vocab});
  std::fprintf(stderr, "wrote logits [%lld, %lld] to %s\n", static_cast<long long>(rows), static_cast<long long>(vocab),
               path.c_str());
}

// Model::load with a progress line while the weights are read into memory.
std::unique_ptr<Model> load_model(const std::string& dir, LoadOptions options = {}) {
  ProgressLine bar("loading (MiB)");
  options.progress = [&](int64_t done, int64_t total) { bar.update(done >> 20, total >> 20); };
  return Model::load(dir, options);
}

void add_device_option(CLI::App* cmd, LoadOptions& load) {
  cmd->add_option("--device", load.device,
                  "Run on cpu (default) or cuda (the GPU: attention, SwiGLU/relu2 MLP, Mamba and Mamba-2 layers)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->type_name("DEVICE");
}

}  // namespace

Command add_run_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "Generate text from a prompt with a Hugging Face model directory");
  struct Args {
    std::string dir, prompt, logits_out, save_state, load_state;
    LoadOptions load;
    GenerateOptions o;
    bool ignore_eos = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("MODEL_DIR", a->dir, "Model directory (config.json, *.safetensors, tokenizer.json)")->required();
  cmd->add_option("-p,--prompt", a->prompt, "Prompt text")->required();
  cmd->add_option("-n,--max-tokens", a->o.max_new_tokens, "Tokens to generate (default 128)")->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--temp", a->o.sampling.temperature, "Sampling temperature; 0 = greedy (default 0)")->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--top-k", a->o.sampling.top_k, "Keep the k most likely tokens (0 = off)")->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--top-p", a->o.sampling.top_p, "Nucleus sampling mass (1 = off)")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--min-p", a->o.sampling.min_p, "Drop tokens below min-p times the best (0 = off)")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--repeat-penalty", a->o.sampling.repetition_penalty, "Repetition penalty (1 = off)")->check(CLI::Range(0.01, 100.0));
  cmd->add_option("--seed", a->o.sampling.seed, "Random seed for sampling (default 0)");
  cmd->add_option("--stop", a->o.stop, "Stop when the output contains this text (repeatable)");
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Keep generating past the end-of-sequence token");
  cmd->add_option("--sparse", a->load.sparse, "Sparse prefill policy for attention layers, e.g. flexprefill:gamma=0.95")
      ->type_name("SPEC");
  cmd->add_option("--kv-cache", a->load.kv_cache, "KV cache dtype: auto (bf16 for bf16 checkpoints, else f32), f32, bf16")
      ->check(CLI::IsMember({"auto", "f32", "bf16"}))
      ->type_name("DTYPE");
  add_device_option(cmd, a->load);
  cmd->add_option("--chunk", a->o.prefill_chunk, "Prefill chunk in tokens (default 512)")->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--logits-out", a->logits_out, "Write f32 logits [tokens, vocab] of every position to FILE.npy")->type_name("FILE");
  cmd->add_option("--save-state", a->save_state, "Save the state after generation to FILE")->type_name("FILE");
  cmd->add_option("--load-state", a->load_state, "Continue from a state saved by --save-state")->type_name("FILE");
  return {cmd, [a] {
            a->o.stop_at_eos = !a->ignore_eos;
            const auto load_start = std::chrono::steady_clock::now();
            const auto model = load_model(a->dir, a->load);
            const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
            Session session(*model, load_tokenizer(a->dir));
            if (!a->load_state.empty()) session.load(a->load_state);
            std::vector<float> logits;
            ProgressLine bar("prefill");
            std::fputs(a->prompt.c_str(), stdout);
            std::fflush(stdout);
            const GenerateStats st = session.generate(
                a->prompt, a->o,
                [&](std::string_view piece) {
                  bar.clear();
                  std::fwrite(piece.data(), 1, piece.size(), stdout);
                  std::fflush(stdout);
                },
                a->logits_out.empty() ? nullptr : &logits, [&](int64_t d, int64_t t) { bar.update(d, t); });
            bar.clear();
            std::fputs("\n", stdout);
            std::fprintf(stderr, "\nload: %.2f s; prefill: %lld tokens in %.3f s (%.1f tok/s); decode: %lld tokens in %.3f s (%.1f tok/s); "
                         "stop: %s; state %s; peak memory %s\n",
                         load_s, static_cast<long long>(st.prompt_tokens), st.prefill_s,
                         st.prefill_s > 0 ? st.prompt_tokens / st.prefill_s : 0.0, static_cast<long long>(st.new_tokens),
                         st.decode_s, st.decode_s > 0 ? st.new_tokens / st.decode_s : 0.0, st.stop_reason.c_str(),
                         human_bytes(static_cast<double>(session.state().state_bytes())).c_str(),
                         human_bytes(static_cast<double>(peak_rss_bytes())).c_str());
            if (!a->logits_out.empty()) write_logits(a->logits_out, logits, model->info().vocab_size);
            if (!a->save_state.empty()) session.save(a->save_state);
          }};
}

Command add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Describe a Hugging Face model directory: architecture, layers, sizes, state");
  auto dir = std::make_shared<std::string>();
  cmd->add_option("MODEL_DIR", *dir, "Model directory")->required();
  return {cmd, [dir] {
            const auto model = load_model(*dir);
            const ModelInfo& i = model->info();
            std::printf("architecture:   %s\n", i.architecture.c_str());
            std::printf("parameters:     %lld (%.1fM)\n", static_cast<long long>(i.parameter_count), i.parameter_count / 1e6);
            std::printf("weights:        %s\n", i.weight_dtypes.c_str());
            std::printf("d_model:        %lld\nvocab:          %lld\n", static_cast<long long>(i.d_model),
                        static_cast<long long>(i.vocab_size));
            std::printf("layers:         %zu\n", i.layers.size());
            // Runs of equal kinds, e.g. "mamba x 24" or "mamba2, attention, mamba2 x 3".
            std::string schedule;
            for (size_t l = 0; l < i.layers.size();) {
              size_t r = l;
              while (r < i.layers.size() && i.layers[r] == i.layers[l]) ++r;
              schedule += (schedule.empty() ? "" : ", ") + i.layers[l] + (r - l > 1 ? " x " + std::to_string(r - l) : "");
              l = r;
            }
            std::printf("schedule:       %s\n", schedule.c_str());
            // State size: measured after 1 and after 65 tokens, so the growth per token shows.
            auto state = model->new_state();
            const std::vector<int32_t> one(1, 0), more(64, 0);
            Tensor logits = Tensor::empty(DType::f32, {1, i.vocab_size});
            model->forward(one, *state, logits);
            const size_t s1 = state->state_bytes();
            model->forward(more, *state, logits);
            const size_t s65 = state->state_bytes();
            std::printf("state:          %s fixed + %s per token of context\n", human_bytes(static_cast<double>(s1)).c_str(),
                        human_bytes(static_cast<double>(s65 - s1) / 64.0).c_str());
          }};
}

Command add_perplexity_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("perplexity", "Perplexity of a text file under a model");
  struct Args {
    std::string dir, file, logits_out;
    LoadOptions load;
    int64_t ctx = 512;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("MODEL_DIR", a->dir, "Model directory")->required();
  cmd->add_option("--file", a->file, "UTF-8 text file to score")->required();
  cmd->add_option("--ctx", a->ctx, "Context window in tokens (default 512)")->check(CLI::Range(2, 1 << 24));
  cmd->add_option("--logits-out", a->logits_out, "Write f32 logits [tokens, vocab] to FILE.npy")->type_name("FILE");
  cmd->add_option("--sparse", a->load.sparse, "Sparse prefill policy for attention layers, e.g. window:window=256")
      ->type_name("SPEC");
  cmd->add_option("--kv-cache", a->load.kv_cache, "KV cache dtype: auto (bf16 for bf16 checkpoints, else f32), f32, bf16")
      ->check(CLI::IsMember({"auto", "f32", "bf16"}))
      ->type_name("DTYPE");
  add_device_option(cmd, a->load);
  return {cmd, [a] {
            std::ifstream f(a->file, std::ios::binary);
            if (!f) throw Error("cannot read " + a->file);
            std::stringstream ss;
            ss << f.rdbuf();
            const auto model = load_model(a->dir, a->load);
            const Tokenizer tok = load_tokenizer(a->dir);
            const std::vector<int32_t> ids = tok.encode(ss.str());
            std::vector<float> logits;
            ProgressLine bar("scoring");
            const auto t0 = std::chrono::steady_clock::now();
            const PerplexityResult r = perplexity(*model, ids, a->ctx, a->logits_out.empty() ? nullptr : &logits,
                                                  [&](int64_t d, int64_t t) { bar.update(d, t); });
            const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            bar.clear();
            std::printf("perplexity: %.4f (mean NLL %.5f nats over %lld tokens, ctx %lld)\n", r.perplexity, r.mean_nll,
                        static_cast<long long>(r.scored_tokens), static_cast<long long>(a->ctx));
            std::fprintf(stderr, "%lld tokens in %.2f s (%.1f tok/s); peak memory %s\n", static_cast<long long>(ids.size()),
                         secs, static_cast<double>(ids.size()) / secs, human_bytes(static_cast<double>(peak_rss_bytes())).c_str());
            if (!a->logits_out.empty()) write_logits(a->logits_out, logits, model->info().vocab_size);
          }};
}

}  // namespace subq::cli
