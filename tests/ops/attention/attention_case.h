// Shared by the attention op tests: one random problem, run through the executor and
// through the float64 reference under the same element mask.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "src/ops/attention/block_mask.h"
#include "src/ops/attention/flash.h"
#include "tests/reference/attention.h"
#include "tests/support/random.h"

namespace subq::test {

// f32 accumulation against float64 with |q|,|k|,|v| <= 1: the logits carry ~1e-7 * sqrt(Dh)
// relative error and the weighted sums ~1e-6 absolute; 1e-4 leaves a 10x margin and
// still catches a dropped or double-counted key (an error of order 1/Tk).
inline constexpr double kAttnRtol = 2e-4;
inline constexpr double kAttnAtol = 2e-5;

// k and v are f32 or bf16 (as a bf16 KV cache holds them); the reference reads the same
// rounded values exactly, so bf16 K/V need no looser tolerance.
struct AttnProblem {
  int64_t B = 1, Tq = 1, Tk = 1, Hq = 1, Hkv = 1, Dh = 64;
  float scale = 0.f;  // 0: 1/sqrt(Dh)
  float softcap = 0.f;
  Tensor q, k, v;

  AttnProblem(std::mt19937_64& rng, int64_t b, int64_t tq, int64_t tk, int64_t hq, int64_t hkv, int64_t dh,
              DType kv = DType::f32)
      : B(b), Tq(tq), Tk(tk), Hq(hq), Hkv(hkv), Dh(dh) {
    q = random_tensor(rng, Shape{B, Tq, Hq, Dh});
    k = random_tensor(rng, Shape{B, Tk, Hkv, Dh});
    v = random_tensor(rng, Shape{B, Tk, Hkv, Dh});
    if (kv != DType::f32) {
      k = converted(k, kv);
      v = converted(v, kv);
    }
  }
  static Tensor converted(const Tensor& t, DType dtype) {
    Tensor out = Tensor::empty(dtype, t.shape());
    convert(t, out);
    return out;
  }
  double used_scale() const { return scale > 0.f ? scale : 1.0 / std::sqrt(static_cast<double>(Dh)); }

  Tensor run(const attn::BlockMask& mask) const {
    Tensor out = nan_tensor(Shape{B, Tq, Hq, Dh});
    attn::flash_attention(q, k, v, mask, {scale, softcap}, out);
    return out;
  }
  std::vector<double> reference(const ref::PairMask& allowed) const {
    return ref::attention(to_double(q), to_double(k), to_double(v), B, Tq, Tk, Hq, Hkv, Dh, used_scale(), softcap,
                          allowed);
  }
  std::vector<double> reference(const attn::BlockMask& mask, const int32_t* key_positions = nullptr) const {
    return reference([&](int64_t b, int64_t h, int64_t i, int64_t j) {
      return ref::block_mask_allows(mask, b, h, i, j, key_positions);
    });
  }
  std::string describe() const {
    return std::string(dtype_name(k.dtype())) + " K/V B=" + std::to_string(B) + " Tq=" + std::to_string(Tq) + " Tk=" + std::to_string(Tk) +
           " Hq=" + std::to_string(Hq) + " Hkv=" + std::to_string(Hkv) + " Dh=" + std::to_string(Dh);
  }
};

}  // namespace subq::test
