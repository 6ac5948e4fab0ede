// bf16/f16 <-> f32 conversion. bf16 -> f32 is a 16-bit shift; f32 -> bf16 rounds to
// nearest even (Highway's DemoteTo truncates, so the rounding is done here).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/common/convert.cpp"
#include <cstring>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void Bf16ToF32(const uint16_t* in, float* out, size_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<uint16_t, decltype(df)> du16;
  const hn::Rebind<uint32_t, decltype(df)> du32;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto w = hn::ShiftLeft<16>(hn::PromoteTo(du32, hn::LoadU(du16, in + i)));
    hn::StoreU(hn::BitCast(df, w), df, out + i);
  }
  for (; i < n; ++i) {
    const uint32_t w = static_cast<uint32_t>(in[i]) << 16;
    std::memcpy(out + i, &w, 4);
  }
}

void F32ToBf16(const float* in, uint16_t* out, size_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<uint32_t, decltype(df)> du32;
  const hn::Rebind<int32_t, decltype(df)> di32;
  const hn::Rebind<uint16_t, decltype(df)> du16;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto v = hn::LoadU(df, in + i);
    const auto bits = hn::BitCast(du32, v);
    const auto lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du32, 1));
    const auto rounded = hn::Add(bits, hn::Add(lsb, hn::Set(du32, 0x7FFF)));
    // NaN stays a quiet NaN instead of rounding into Inf.
    const auto quiet = hn::Or(bits, hn::Set(du32, 0x00400000));
    const auto chosen = hn::IfThenElse(hn::RebindMask(du32, hn::IsNaN(v)), quiet, rounded);
    const auto hi = hn::BitCast(di32, hn::ShiftRight<16>(chosen));
    hn::StoreU(hn::DemoteTo(du16, hi), du16, out + i);
  }
  for (; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, in + i, 4);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) bits |= 0x00400000u;
    else bits += 0x7FFFu + ((bits >> 16) & 1u);
    out[i] = static_cast<uint16_t>(bits >> 16);
  }
}

void F16ToF32(const hwy::float16_t* in, float* out, size_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, in + i)), df, out + i);
  if (i < n) {
    const hn::CappedTag<float, 1> d1;
    const hn::Rebind<hwy::float16_t, decltype(d1)> dh1;
    for (; i < n; ++i) hn::StoreU(hn::PromoteTo(d1, hn::LoadU(dh1, in + i)), d1, out + i);
  }
}

// Portable f32 -> f16 with round to nearest even, for targets whose DemoteTo truncates.
uint16_t F32ToF16Bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);  // NaN
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to Inf
  if (abs < 0x38800000u) {  // f16 subnormal or zero: scale so the integer rounding is exact
    const uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
    const int shift = 126 - static_cast<int>(abs >> 23);  // 14 + (113 - exponent)
    if (shift > 24) return static_cast<uint16_t>(sign);
    const uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    const uint32_t r = q + ((rem > halfway || (rem == halfway && (q & 1))) ? 1 : 0);
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t rebased = abs - 0x38000000u;  // exponent bias 127 -> 15
  const uint32_t q = rebased >> 13, rem = rebased & 0x1FFFu;
  const uint32_t r = q + ((rem > 0x1000u || (rem == 0x1000u && (q & 1))) ? 1 : 0);
  return static_cast<uint16_t>(sign | r);
}

void F32ToF16(const float* in, hwy::float16_t* out, size_t n) {
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  for (size_t i = 0; i < n; ++i) {
    const uint16_t bits = F32ToF16Bits(in[i]);
    std::memcpy(out + i, &bits, 2);
  }
#else
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::DemoteTo(dh, hn::LoadU(df, in + i)), dh, out + i);
  for (; i < n; ++i) {
    const uint16_t bits = F32ToF16Bits(in[i]);
    std::memcpy(out + i, &bits, 2);
  }
#endif
}

}  // namespace subq::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "src/core/parallel.h"
#include "src/ops/common/convert.h"
#include "subq/ops.h"

namespace subq {
namespace ops {

HWY_EXPORT(Bf16ToF32);
HWY_EXPORT(F32ToBf16);
HWY_EXPORT(F16ToF32);
HWY_EXPORT(F32ToF16);

void bf16_to_f32(const bf16* in, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(Bf16ToF32)(reinterpret_cast<const uint16_t*>(in), out, n);
}
void f32_to_bf16(const float* in, bf16* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(F32ToBf16)(in, reinterpret_cast<uint16_t*>(out), n);
}
void f16_to_f32(const f16* in, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(F16ToF32)(reinterpret_cast<const hwy::float16_t*>(in), out, n);
}
void f32_to_f16(const float* in, f16* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(F32ToF16)(in, reinterpret_cast<hwy::float16_t*>(out), n);
}

void to_f32(const void* in, DType dtype, float* out, size_t n) {
  switch (dtype) {
    case DType::f32: std::memcpy(out, in, n * sizeof(float)); return;
    case DType::bf16: bf16_to_f32(static_cast<const bf16*>(in), out, n); return;
    case DType::f16: f16_to_f32(static_cast<const f16*>(in), out, n); return;
    default: throw Error(std::string("to_f32: cannot widen ") + dtype_name(dtype) + " to f32");
  }
}

}  // namespace ops

float to_float(bf16 v) {
  float f;
  ops::bf16_to_f32(&v, &f, 1);
  return f;
}
float to_float(f16 v) {
  float f;
  ops::f16_to_f32(&v, &f, 1);
  return f;
}
bf16 to_bf16(float v) {
  bf16 b;
  ops::f32_to_bf16(&v, &b, 1);
  return b;
}
f16 to_f16(float v) {
  f16 h;
  ops::f32_to_f16(&v, &h, 1);
  return h;
}

void convert(const Tensor& src, const Tensor& dst) {
  check_contiguous(src, "convert: src");
  check_contiguous(dst, "convert: dst");
  if (src.numel() != dst.numel())
    throw Error("convert: src " + src.str() + " and dst " + dst.str() + " differ in element count");
  const int64_t n = src.numel();
  const DType s = src.dtype(), d = dst.dtype();
  auto run = [&](auto&& fn) {
    parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) { fn(b, static_cast<size_t>(e - b)); });
  };
  if (s == d) {
    const size_t es = dtype_size(s);
    run([&](int64_t b, size_t len) {
      std::memcpy(static_cast<std::byte*>(dst.mutable_raw_data()) + b * es,
                  static_cast<const std::byte*>(src.raw_data()) + b * es, len * es);
    });
  } else if (s == DType::f32 && d == DType::bf16) {
    run([&](int64_t b, size_t len) { ops::f32_to_bf16(src.data<float>() + b, dst.mutable_data<bf16>() + b, len); });
  } else if (s == DType::f32 && d == DType::f16) {
    run([&](int64_t b, size_t len) { ops::f32_to_f16(src.data<float>() + b, dst.mutable_data<f16>() + b, len); });
  } else if (s == DType::bf16 && d == DType::f32) {
    run([&](int64_t b, size_t len) { ops::bf16_to_f32(src.data<bf16>() + b, dst.mutable_data<float>() + b, len); });
  } else if (s == DType::f16 && d == DType::f32) {
    run([&](int64_t b, size_t len) { ops::f16_to_f32(src.data<f16>() + b, dst.mutable_data<float>() + b, len); });
  } else {
    throw Error(std::string("convert: no conversion from ") + dtype_name(s) + " to " + dtype_name(d));
  }
}

}  // namespace subq
#endif  // HWY_ONCE
