#include "subq/mixer.h"

namespace subq {

std::vector<Tensor> MixerState::snapshot() const { throw Error("this mixer's state cannot be saved"); }
void MixerState::restore(const std::vector<Tensor>&) { throw Error("this mixer's state cannot be restored"); }

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
