// subq public API: the token-mixer contract every family implements.
//
//   auto state = mixer.new_state(batch);
//   mixer.forward(x, *state, y);   // x, y: f32 [B, T, D], T >= 1
//
// forward consumes T tokens continuing from `state` and advances it. Prefill is one
// forward with large T, decode is forward with T = 1, and any split of a sequence into
// consecutive forwards gives the same outputs as one forward over the whole sequence
// (split invariance). That invariant is what makes chunked prefill, streaming decode and
// state save/load correct, and every mixer is tested for it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "subq/tensor.h"

namespace subq {

// Per-sequence recurrent state (conv window + SSM state, matrix state, KV cache, ...).
class MixerState {
 public:
  virtual ~MixerState() = default;
  virtual int64_t batch() const = 0;
  // Bytes the state holds now. O(1) in tokens seen for recurrent mixers, O(T) for a
  // full KV cache, bounded for window/sink attention.
  virtual size_t state_bytes() const = 0;
  // The state's contents as tensors, for saving a session to a file. restore() takes
  // what snapshot() produced for a state of the same mixer (shapes may differ with tokens
  // seen, as a KV cache's do) and throws Error on any mismatch. States that cannot be
  // saved keep these defaults, which throw.
  virtual std::vector<Tensor> snapshot() const;
  virtual void restore(const std::vector<Tensor>& tensors);
  // Makes room for `tokens` tokens of context in all, so that a state growing with the
  // sequence (a KV cache) need not grow, copying itself, while they are fed. A hint:
  // states of fixed or bounded size ignore it.
  virtual void reserve(int64_t /*tokens*/) {}
};

// The state of a recurrent mixer: a fixed list of f32 tensors whose shapes depend only on
// the batch and the config. snapshot(), restore() and state_bytes() follow from parts().
class FixedState : public MixerState {
 public:
  size_t state_bytes() const override;
  std::vector<Tensor> snapshot() const override;
  void restore(const std::vector<Tensor>& tensors) override;

 protected:
  struct Part {
    const char* name;  // for messages, e.g. "conv window"
    Tensor tensor;     // shares storage with the state's own tensor
  };
  virtual std::vector<Part> parts() const = 0;
};

class Mixer {
 public:
  virtual ~Mixer() = default;
  // Short name of the mixer kind, e.g. "mamba", "mamba2", "attention".
  virtual std::string kind() const = 0;
  // Model width D: x and y are [B, T, D].
  virtual int64_t d_model() const = 0;
  virtual std::unique_ptr<MixerState> new_state(int64_t batch) const = 0;
  // y = mixer(x) continuing from state; advances state by T tokens. x and y must not
  // alias. Throws Error if shapes, dtypes or the state's batch do not match.
  virtual void forward(const Tensor& x, MixerState& state, const Tensor& y) const = 0;
};

// Checks x/y against a mixer's width and the state's batch; shared by every mixer.
void check_mixer_io(const Mixer& m, const Tensor& x, const MixerState& state, const Tensor& y);

}  // namespace subq
