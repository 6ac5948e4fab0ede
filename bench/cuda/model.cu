// Whole models on the GPU: prefill and decode of Model::load(dir, device "cuda") on the
// random-init checkpoints that bench/gpu/peers.py models writes (and times in
// transformers) under the same names. Prefill: one forward over T prompt tokens, logits
// of the last position only; decode: the mean of 32 one-token steps after a 512-token
// prompt, each ending with its logits on the host as a sampler needs them. Decode GB/s
// counts every checkpoint weight once per token (an untied input embedding, of which a
// step reads one row, included: an overcount of V x D); none for the mixture of experts,
// whose step reads only its chosen experts.
#include <filesystem>
#include <vector>

#include "bench/cuda/bench.h"
#include "bench/cuda/timing.h"
#include "subq/model.h"

namespace subq::bench::gpu {

void bench_models(const std::string& root) {
  for (const char* name : {"llama160m", "mamba130m", "mamba2_130m", "jamba_moe"}) {
    const std::string dir = root + "/" + name;
    if (!std::filesystem::exists(dir + "/config.json")) {
      std::fprintf(stderr, "subq_cuda_bench: %s not found (written by bench/gpu/peers.py models)\n", dir.c_str());
      continue;
    }
    LoadOptions options;
    options.device = "cuda";
    const auto model = Model::load(dir, options);
    const int64_t V = model->info().vocab_size;
    const bool mixture = std::string(name) == "jamba_moe";
    const double weight_bytes = mixture ? 0.0 : 2.0 * static_cast<double>(model->info().parameter_count);  // bf16
    Tensor logits = Tensor::empty(DType::f32, {1, V});
    for (int64_t T : {512, 4096}) {
      std::vector<int32_t> ids(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) ids[static_cast<size_t>(t)] = static_cast<int32_t>(3 + (t * 7919) % 94);
      const double ms = median_ms([&] { model->forward(ids, *model->new_state(), logits); }, 2, 5);
      report("model.prefill", std::string(name) + " bf16 T=" + std::to_string(T), ms, 0, 0);
      if (T != 512) continue;
      auto state = model->new_state();
      model->forward(ids, *state, logits);
      constexpr int kSteps = 32;
      const double total = median_ms(
          [&] {
            for (int i = 0; i < kSteps; ++i) {
              const int32_t next = 3 + i;
              model->forward(std::span<const int32_t>(&next, 1), *state, logits);
            }
          },
          1, 3);
      report("model.decode", std::string(name) + " bf16 T=512", total / kSteps, 0, weight_bytes);
    }
  }
}

}  // namespace subq::bench::gpu
