// Packed GEMM y (+)= x · W^T in the GotoBLAS/BLIS scheme: W is packed per (NC x KC) block
// into panels of NR columns of W^T (transposed, widened to f32: the kernel loads NR
// consecutive outputs' weights for one k as vectors), x per (MC x KC) block into panels of
// MR rows interleaved by k (the kernel broadcasts them). An MR x NR register tile
// accumulates over KC with FMAs; each W panel is reused by all row tiles of an x block.
// Threads own disjoint column (or, for narrow W, row) ranges of y with their own buffers.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/common/gemm_packed.cpp"
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/common/gemm_kernels.h"
#include "subq/tensor.h"

HWY_BEFORE_NAMESPACE();
namespace subq::ops::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
constexpr size_t kLanes = HWY_LANES(float);

// Register tile: kMR rows of x by kNV vectors of outputs. AVX-512 has 32 registers:
// 8 x 3 accumulators + 3 weight vectors + 1 broadcast. AVX2 has 16.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr size_t kMR = 8, kNV = 3;
#elif HWY_ARCH_X86 && HWY_TARGET == HWY_AVX2
constexpr size_t kMR = 4, kNV = 3;
#else
constexpr size_t kMR = 4, kNV = 2;
#endif
constexpr size_t kNR = kNV * kLanes;
// Cache blocks (Zen 5: 48 KiB L1, 1 MiB L2 per core): the KC x NR weight panel (48 KiB)
// is reused from L1/L2 by all MC / MR row tiles; the MC x KC x-block (128 KiB) stays in
// L2; the KC x NC weight block (1.5 MiB) in L3. Measured flat within a few % for KC in
// 128..512 and MC in 64..512.
constexpr size_t kKC = 256;
constexpr size_t kMC = 16 * kMR;
constexpr size_t kNC = 32 * kNR;
// Scratch tags: a part's packed weight block and packed x block.
struct PackedW;
struct PackedX;

template <class D>
HWY_INLINE hn::Vec<D> LoadWide(D d, const float* p) {
  return hn::LoadU(d, p);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadWide(D d, const hwy::bfloat16_t* p) {
  const hn::Rebind<uint16_t, D> du16;
  const hn::Rebind<uint32_t, D> du32;
  const auto bits = hn::PromoteTo(du32, hn::LoadU(du16, reinterpret_cast<const uint16_t*>(p)));
  return hn::BitCast(d, hn::ShiftLeft<16>(bits));
}
template <class D>
HWY_INLINE hn::Vec<D> LoadWide(D d, const hwy::float16_t* p) {
  const hn::Rebind<hwy::float16_t, D> dh;
  return hn::PromoteTo(d, hn::LoadU(dh, p));
}

template <class T>
HWY_INLINE float WideScalar(const T* p) {
  const hn::CappedTag<float, 1> d1;
  return hn::GetLane(LoadWide(d1, p));
}

// Packs rows [0, rows) x columns [0, kc) of src (row stride ld) transposed into
// dst[k * width + r], widened to f32; rows in [rows, width) are zero.
template <class T>
void PackTransposed(const T* src, size_t ld, size_t rows, size_t kc, float* HWY_RESTRICT dst, size_t width) {
  size_t r = 0;
#if HWY_TARGET != HWY_SCALAR
  const hn::Full128<float> d4;
  const hn::Repartition<uint64_t, decltype(d4)> d64;
  for (; r + 4 <= rows; r += 4) {
    const T* s0 = src + r * ld;
    const T* s1 = s0 + ld;
    const T* s2 = s1 + ld;
    const T* s3 = s2 + ld;
    size_t k = 0;
    for (; k + 4 <= kc; k += 4) {
      const auto v0 = LoadWide(d4, s0 + k), v1 = LoadWide(d4, s1 + k);
      const auto v2 = LoadWide(d4, s2 + k), v3 = LoadWide(d4, s3 + k);
      // 4x4 transpose: pairs of rows interleaved, then 64-bit halves interleaved.
      const auto t0 = hn::BitCast(d64, hn::InterleaveLower(d4, v0, v1));
      const auto t1 = hn::BitCast(d64, hn::InterleaveLower(d4, v2, v3));
      const auto t2 = hn::BitCast(d64, hn::InterleaveUpper(d4, v0, v1));
      const auto t3 = hn::BitCast(d64, hn::InterleaveUpper(d4, v2, v3));
      float* o = dst + k * width + r;
      hn::StoreU(hn::BitCast(d4, hn::InterleaveLower(d64, t0, t1)), d4, o);
      hn::StoreU(hn::BitCast(d4, hn::InterleaveUpper(d64, t0, t1)), d4, o + width);
      hn::StoreU(hn::BitCast(d4, hn::InterleaveLower(d64, t2, t3)), d4, o + 2 * width);
      hn::StoreU(hn::BitCast(d4, hn::InterleaveUpper(d64, t2, t3)), d4, o + 3 * width);
    }
    for (; k < kc; ++k) {
      float* o = dst + k * width + r;
      o[0] = WideScalar(s0 + k);
      o[1] = WideScalar(s1 + k);
      o[2] = WideScalar(s2 + k);
      o[3] = WideScalar(s3 + k);
    }
  }
#endif
  for (; r < rows; ++r)
    for (size_t k = 0; k < kc; ++k) dst[k * width + r] = WideScalar(src + r * ld + k);
  for (; r < width; ++r)
    for (size_t k = 0; k < kc; ++k) dst[k * width + r] = 0.f;
}

// c[kMR, kNR] (+)= a · b over kc: a is kc x kMR (broadcast), b is kc x kNR (vectors).
HWY_INLINE void TileKernel(size_t kc, const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, float* c, size_t ldc,
                           bool add_c) {
  const DF d;
  VF acc[kMR][kNV];
  HWY_UNROLL(kMR)
  for (size_t i = 0; i < kMR; ++i) {
    HWY_UNROLL(kNV)
    for (size_t j = 0; j < kNV; ++j) acc[i][j] = hn::Zero(d);
  }
  for (size_t k = 0; k < kc; ++k, a += kMR, b += kNR) {
    VF bv[kNV];
    HWY_UNROLL(kNV)
    for (size_t j = 0; j < kNV; ++j) bv[j] = hn::Load(d, b + j * kLanes);
    HWY_UNROLL(kMR)
    for (size_t i = 0; i < kMR; ++i) {
      const VF ai = hn::Set(d, a[i]);
      HWY_UNROLL(kNV)
      for (size_t j = 0; j < kNV; ++j) acc[i][j] = hn::MulAdd(ai, bv[j], acc[i][j]);
    }
  }
  HWY_UNROLL(kMR)
  for (size_t i = 0; i < kMR; ++i) {
    HWY_UNROLL(kNV)
    for (size_t j = 0; j < kNV; ++j) {
      float* p = c + i * ldc + j * kLanes;
      hn::StoreU(add_c ? hn::Add(hn::LoadU(d, p), acc[i][j]) : acc[i][j], d, p);
    }
  }
}

// One thread's share: y[0:M, 0:N] of the caller's (already offset) pointers, with its own
// packing buffers bpack (kKC x nc_max) and apack (kKC x kMC).
template <class T>
void GemmRange(size_t M, size_t N, size_t K, const float* x, size_t ldx, const T* w, size_t ldw, float* y,
               size_t ldy, bool accumulate, float* HWY_RESTRICT bpack, float* HWY_RESTRICT apack, size_t nc_max) {
  HWY_ALIGN float edge[kMR * kNR];
  for (size_t jc = 0; jc < N; jc += nc_max) {
    const size_t nc = std::min(nc_max, N - jc);
    const size_t npanels = (nc + kNR - 1) / kNR;
    for (size_t pc = 0; pc < K; pc += kKC) {
      const size_t kc = std::min(kKC, K - pc);
      const bool add_c = accumulate || pc > 0;
      for (size_t p = 0; p < npanels; ++p)
        PackTransposed(w + (jc + p * kNR) * ldw + pc, ldw, std::min(kNR, nc - p * kNR), kc, bpack + p * kNR * kc,
                       kNR);
      for (size_t ic = 0; ic < M; ic += kMC) {
        const size_t mc = std::min(kMC, M - ic);
        const size_t mpanels = (mc + kMR - 1) / kMR;
        for (size_t q = 0; q < mpanels; ++q)
          PackTransposed(x + (ic + q * kMR) * ldx + pc, ldx, std::min(kMR, mc - q * kMR), kc, apack + q * kMR * kc,
                         kMR);
        for (size_t p = 0; p < npanels; ++p) {
          const size_t cols = std::min(kNR, nc - p * kNR);
          for (size_t q = 0; q < mpanels; ++q) {
            const size_t rows = std::min(kMR, mc - q * kMR);
            float* c = y + (ic + q * kMR) * ldy + jc + p * kNR;
            const float* a = apack + q * kMR * kc;
            const float* b = bpack + p * kNR * kc;
            if (rows == kMR && cols == kNR) {
              TileKernel(kc, a, b, c, ldy, add_c);
              continue;
            }
            TileKernel(kc, a, b, edge, kNR, false);
            for (size_t i = 0; i < rows; ++i) {
              for (size_t j = 0; j < cols; ++j) {
                const float v = edge[i * kNR + j];
                c[i * ldy + j] = add_c ? c[i * ldy + j] + v : v;
              }
            }
          }
        }
      }
    }
  }
}

template <class T>
void GemmPackedTyped(size_t M, size_t N, size_t K, const float* x, size_t ldx, const T* w, size_t ldw, float* y,
                     size_t ldy, bool accumulate) {
  // Split y by columns (each part packs only its share of W, and all of x) when W gives
  // every thread two panels or x has few rows: up to 4 parts per thread (the same number
  // for every thread), taken dynamically, so a thread that loses its core to another
  // process does not hold up the call; a part keeps at least 8 panels, since each part
  // repacks x. Narrower W splits by columns and by rows: a panel or more per column part
  // and enough row parts for two parts per thread, each packing its columns of W and its
  // rows of x. (Rows alone made every part pack all of W: a 768-wide W on 16 threads was
  // packed 64 times per product; the two-way split runs 512-token prefills of Llama-160M
  // 1.32-1.36x and of the Mamba models 1.15-1.25x faster on 16 threads of a Xeon VM.)
  const size_t threads = static_cast<size_t>(std::max(1, num_threads()));
  const size_t col_panels = (N + kNR - 1) / kNR, row_tiles = (M + kMR - 1) / kMR;
  size_t col_parts = 0, row_parts = 1;
  if (col_panels >= 2 * threads || M < 2 * kMR * threads) {
    col_parts = std::min(col_panels, std::clamp<size_t>(col_panels / (8 * threads), 1, 4) * threads);
  } else {
    col_parts = std::min(col_panels, threads);
    row_parts = std::min(row_tiles, (2 * threads + col_parts - 1) / col_parts);
  }
  parallel_for_each(static_cast<int64_t>(col_parts * row_parts), [&](int64_t part) {
    const size_t cp = static_cast<size_t>(part) % col_parts, rp = static_cast<size_t>(part) / col_parts;
    const size_t m0 = row_tiles * rp / row_parts * kMR, m1 = std::min(M, row_tiles * (rp + 1) / row_parts * kMR);
    const size_t n0 = col_panels * cp / col_parts * kNR, n1 = std::min(N, col_panels * (cp + 1) / col_parts * kNR);
    if (m0 >= m1 || n0 >= n1) return;
    const size_t nc_max = std::min(kNC, (n1 - n0 + kNR - 1) / kNR * kNR);
    const size_t kc_max = std::min(kKC, K);
    const Scratch<PackedW, float> bpack(kc_max * nc_max);
    const Scratch<PackedX, float> apack(kc_max * kMC);
    GemmRange(m1 - m0, n1 - n0, K, x + m0 * ldx, ldx, w + n0 * ldw, ldw, y + m0 * ldy + n0, ldy, accumulate,
              bpack.data(), apack.data(), nc_max);
  });
}

void GemmPacked(size_t M, size_t N, size_t K, const float* x, size_t ldx, const void* w, DType wdt, size_t ldw,
                float* y, size_t ldy, bool accumulate) {
  switch (wdt) {
    case DType::bf16:
      return GemmPackedTyped(M, N, K, x, ldx, static_cast<const hwy::bfloat16_t*>(w), ldw, y, ldy, accumulate);
    case DType::f16:
      return GemmPackedTyped(M, N, K, x, ldx, static_cast<const hwy::float16_t*>(w), ldw, y, ldy, accumulate);
    default:
      return GemmPackedTyped(M, N, K, x, ldx, static_cast<const float*>(w), ldw, y, ldy, accumulate);
  }
}

}  // namespace subq::ops::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

namespace subq::ops {

HWY_EXPORT(GemmPacked);

void gemm_packed_xwt(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const void* w, DType wdt,
                     int64_t ldw, float* y, int64_t ldy, bool accumulate) {
  HWY_DYNAMIC_DISPATCH(GemmPacked)(static_cast<size_t>(M), static_cast<size_t>(N), static_cast<size_t>(K), x,
                                   static_cast<size_t>(ldx), w, wdt, static_cast<size_t>(ldw), y,
                                   static_cast<size_t>(ldy), accumulate);
}

}  // namespace subq::ops
#endif  // HWY_ONCE
