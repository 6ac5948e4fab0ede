#include "subq/mixer.h"

#include <algorithm>

namespace subq {

std::vector<Tensor> MixerState::snapshot() const { throw Error("this mixer's state cannot be saved"); }
void MixerState::restore(const std::vector<Tensor>&) { throw Error("this mixer's state cannot be restored"); }

size_t FixedState::state_bytes() const {
  size_t n = 0;
  for (const Part& p : parts()) n += p.tensor.nbytes();
  return n;
}

std::vector<Tensor> FixedState::snapshot() const {
  std::vector<Tensor> out;
  for (const Part& p : parts()) out.push_back(p.tensor);
  return out;
}

void FixedState::restore(const std::vector<Tensor>& tensors) {
  const std::vector<Part> mine = parts();
  if (tensors.size() != mine.size())
    throw Error("state restore: expected " + std::to_string(mine.size()) + " tensors, found " +
                std::to_string(tensors.size()));
  for (size_t i = 0; i < mine.size(); ++i) {
    const std::string what = std::string("state restore: ") + mine[i].name;
    check_dtype(tensors[i], DType::f32, what.c_str());
    check_shape(tensors[i], mine[i].tensor.shape(), what.c_str());
  }
  for (size_t i = 0; i < mine.size(); ++i) {
    const Tensor src = tensors[i].is_contiguous() ? tensors[i] : tensors[i].contiguous();
    std::copy_n(src.data<float>(), src.numel(), mine[i].tensor.mutable_data<float>());
  }
}

void check_mixer_io(const Mixer& m, const Tensor& x, const MixerState& state, const Tensor& y) {
  const std::string who = m.kind() + " forward";
  check_dtype(x, DType::f32, (who + ": x").c_str());
  check_dtype(y, DType::f32, (who + ": y").c_str());
  check_contiguous(x, (who + ": x").c_str());
  check_contiguous(y, (who + ": y").c_str());
  if (x.ndim() != 3 || x.dim(1) < 1 || x.dim(2) != m.d_model())
    throw Error(who + ": x must be [B, T >= 1, " + std::to_string(m.d_model()) + "], found " + x.str());
  if (x.dim(0) != state.batch())
    throw Error(who + ": x has batch " + std::to_string(x.dim(0)) + " but the state was made for batch " +
                std::to_string(state.batch()));
  check_shape(y, x.shape(), (who + ": y").c_str());
  if (x.raw_data() == y.raw_data()) throw Error(who + ": x and y must not alias");
}

}  // namespace subq
