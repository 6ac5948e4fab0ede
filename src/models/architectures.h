// One function per Hugging Face architecture: reads config.json, maps tensor names and
// returns the DecoderSpec. Each lives in its own file (src/models/<arch>.cpp); the
// registry (src/models/registry.cpp) maps "architectures"[0] to it.
#pragma once

#include "src/models/decoder.h"
#include "subq/io.h"

namespace subq::models {

DecoderSpec build_llama(const Config& config, const Checkpoint& weights, const LoadOptions& options);
DecoderSpec build_mamba(const Config& config, const Checkpoint& weights, const LoadOptions& options);
DecoderSpec build_mamba2(const Config& config, const Checkpoint& weights, const LoadOptions& options);
DecoderSpec build_nemotron_h(const Config& config, const Checkpoint& weights, const LoadOptions& options);
DecoderSpec build_bamba(const Config& config, const Checkpoint& weights, const LoadOptions& options);
DecoderSpec build_jamba(const Config& config, const Checkpoint& weights, const LoadOptions& options);

}  // namespace subq::models

// Shared by Mamba and Jamba: the Mamba-1 mixer's tensors under `prefix`, with Jamba's
// dt/B/C norms when config.inner_norms.
#include "src/mixers/mamba_mixer.h"
namespace subq::models {
MambaWeights load_mamba_weights(const MambaConfig& config, const Checkpoint& w, const std::string& prefix);
}  // namespace subq::models

// Shared by the Mamba-2 based architectures (Mamba-2, Nemotron-H, Bamba): the mixer's
// tensors under `prefix` (".../mixer." or ".../mamba."), checked against `config`.
#include "src/mixers/mamba2_mixer.h"
namespace subq::models {
std::unique_ptr<Mixer> load_mamba2_mixer(const mixers::Mamba2Config& config, const Checkpoint& w,
                                         const std::string& prefix, bool proj_bias, bool conv_bias);
// time_step_limit as [min, max] (default [0, inf]).
void read_time_step_limit(const Config& c, const std::string& field, mixers::Mamba2Config& mc);
}  // namespace subq::models

// Shared by the architectures with softmax attention: q/k/v/o under `prefix`
// (".../self_attn." or ".../mixer."); with `bias`, q/k/v/o_proj.bias too. The KV cache
// dtype is options.kv_cache, or by default bf16 when q/k/v/o are bf16 and f32 otherwise.
#include "src/mixers/attention_mixer.h"
namespace subq::models {
std::unique_ptr<Mixer> load_attention(const AttentionConfig& config, const Checkpoint& w, const std::string& prefix,
                                      bool bias, const LoadOptions& options);
// The head count, kv heads, head_dim and sparse policy of a Llama-style config; rotary
// settings are the caller's (they differ per architecture).
AttentionConfig attention_config(const Config& c, const LoadOptions& options);
// rope_parameters (transformers >= 5) or the older rope_theta / rope_scaling fields:
// rope types default, linear, llama3 and yarn; any other type is an Error naming it.
void read_rope(const Config& c, AttentionConfig& ac);
}  // namespace subq::models
