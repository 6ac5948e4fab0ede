// Flash attention forward (split-KV decode has its own kernel: decode.cpp). A tile of
// query rows (pre-scaled, padded to the vector width) against a list of key blocks. Per
// block: K is transposed into a [Dh, Bk] tile so S = Q·K^T is an outer-product GEMM with
// query values broadcast; the element rule and soft-cap are applied to S; the running max
// and sum are updated; and O = O * alpha + P·V, broadcasting P. Accumulators stay f32.
// K and V may be bf16 (a bf16 KV cache): they are widened where they are read (while K
// is transposed into its tile, in the direct Q·K loop, in the P·V loop), so the cache is
// never copied to f32. Under MatmulPrecision::bf16 a prefill over a bf16 cache runs both
// products on AMX tiles instead (flash_amx.h).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/attention/flash.cpp"
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "hwy/aligned_allocator.h"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"
#include "src/core/parallel.h"
#include "src/ops/attention/flash.h"
#include "src/ops/attention/flash_amx.h"
#include "src/ops/attention/score_rows-inl.h"

#ifndef SUBQ_ATTN_FLASH_SHARED
#define SUBQ_ATTN_FLASH_SHARED
namespace subq::attn::detail {

// A zero-filled float buffer aligned for whole-vector loads.
class AlignedFloats {
 public:
  void assign(size_t n, float value) {
    p_ = hwy::AllocateAligned<float>(std::max<size_t>(n, 1));
    std::fill_n(p_.get(), n, value);
  }
  float* data() { return p_.get(); }
  const float* data() const { return p_.get(); }
  float& operator[](size_t i) { return p_[i]; }

 private:
  hwy::AlignedFreeUniquePtr<float[]> p_;
};

// A key block made ready for the tile kernel: K transposed ([Dh, Bk], padded) and,
// when filled, V widened into a contiguous [Bk, Dh] tile. Query blocks of one head visit
// overlapping key blocks under sliding-window, neighborhood and block-sparse masks (each
// key block of a 512-token window is visited by 8 query blocks), so each thread keeps the
// last few it prepared.
struct PreparedBlock {
  AlignedFloats kt, vs;
  const void* keys = nullptr;  // the head's first key; with block, the tag
  int64_t block = -1;
  bool has_v = false;
  uint64_t last_use = 0;
};
constexpr size_t kPreparedBlocks = 8;
// Up to this many query rows, Q·K^T is computed as dot products over untransposed keys.
constexpr int64_t kDirectRows = 8;

// What a tile's buffers are sized for.
struct TileSizes {
  int64_t rows = -1, padded_dim = 0, padded_k_block = 0, head_dim = 0;
  bool amx = false;
  bool operator==(const TileSizes&) const = default;
};

// Per-thread tile buffers, kept across calls.
struct Tile {
  std::vector<PreparedBlock> prepared;  // kPreparedBlocks slots; one for tiles of at most kDirectRows rows
  uint64_t uses = 0;
  TileSizes sizes;
  uint64_t call = 0;  // the executor call whose key blocks `prepared` holds
  AlignedFloats q, s, o;
  std::vector<float> m, l, alpha;
  std::vector<int64_t> qpos;
  AmxTile amx;  // sized only when the call takes the AMX path
};

// What the tile kernel needs to know about one call.
struct TileProblem {
  int64_t head_dim, padded_dim;        // Dh and Dh rounded up to the vector width
  int64_t k_block, padded_k_block;     // key block and its padded width
  int64_t kv_len;
  float softcap;
  const ElementRule* rule;
  const int32_t* key_positions;
  DType kv_dtype;                      // f32 or bf16
  bool amx = false;                    // Q·K^T and P·V on AMX tiles (flash_amx.h)
};

// Floats per key block prepared by PackBlocks: K^T [Dp, Bkp] then V [Bkp, Dp].
inline int64_t PackedBlockFloats(const TileProblem& pb) { return 2 * pb.padded_dim * pb.padded_k_block; }

}  // namespace subq::attn::detail
#endif

HWY_BEFORE_NAMESPACE();
namespace subq::attn::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::Tile;
using detail::TileProblem;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
// Register tile width in vectors: AVX-512 has 32 registers, AVX2 and below 16.
constexpr int kMaxCols = HWY_TARGET <= HWY_AVX3 ? 4 : 2;
constexpr int kMaxRows = 4;
using detail::kDirectRows;

// One vector of keys or values as stored (f32 or bf16), widened to f32: bf16 is the high
// half of an f32, so widening is a zero-extension and a shift.
HWY_INLINE VF LoadKV(DF d, const float* HWY_RESTRICT p) { return hn::LoadU(d, p); }
HWY_INLINE VF LoadKV(DF d, const hwy::bfloat16_t* HWY_RESTRICT p) {
  const hn::Rebind<uint16_t, DF> du16;
  const hn::Rebind<uint32_t, DF> du32;
  const auto bits = hn::PromoteTo(du32, hn::LoadU(du16, reinterpret_cast<const uint16_t*>(p)));
  return hn::BitCast(d, hn::ShiftLeft<16>(bits));
}
HWY_INLINE float KVScalar(float x) { return x; }
HWY_INLINE float KVScalar(hwy::bfloat16_t x) { return hwy::F32FromBF16(x); }

// s[r, c*N..] = sum_x q[r, x] * kt[x, c*N..] for R rows and C vectors of keys.
template <int R, int C>
HWY_INLINE void QKMicro(const float* HWY_RESTRICT q, int64_t ldq, const float* HWY_RESTRICT kt, int64_t ldk,
                        float* HWY_RESTRICT s, int64_t lds, int64_t depth) {
  const DF d;
  const size_t N = hn::Lanes(d);
  VF acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = hn::Zero(d);
  for (int64_t x = 0; x < depth; ++x) {
    VF kv[C];
    for (int c = 0; c < C; ++c) kv[c] = hn::Load(d, kt + x * ldk + static_cast<int64_t>(c * N));
    for (int r = 0; r < R; ++r) {
      const VF qv = hn::Set(d, q[r * ldq + x]);
      for (int c = 0; c < C; ++c) acc[r][c] = hn::MulAdd(qv, kv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) hn::Store(acc[r][c], d, s + r * lds + static_cast<int64_t>(c * N));
}

// Rows ahead that the kernels prefetch: a head's rows of the KV cache lie a token's heads
// apart (1-4 KB), a stride the hardware prefetchers follow poorly.
constexpr int64_t kAhead = 16;

// The `bytes` of one row, kAhead rows ahead of the one being read.
HWY_INLINE void PrefetchRow(const void* row_ahead, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(row_ahead) + b);
}

// o[r, c*N..] = o[r, c*N..] * alpha[r] + sum_{j < keys} p[r, j] * vs[j, c*N..].
template <int R, int C, class T>
HWY_INLINE void PVMicro(const float* HWY_RESTRICT p, int64_t ldp, const T* HWY_RESTRICT vs, int64_t ldv,
                        float* HWY_RESTRICT o, int64_t ldo, const float* HWY_RESTRICT alpha, int64_t keys) {
  const DF d;
  const size_t N = hn::Lanes(d);
  VF acc[R][C];
  for (int r = 0; r < R; ++r) {
    const VF a = hn::Set(d, alpha[r]);
    for (int c = 0; c < C; ++c) acc[r][c] = hn::Mul(a, hn::Load(d, o + r * ldo + static_cast<int64_t>(c * N)));
  }
  for (int64_t j = 0; j < keys; ++j) {
    __builtin_prefetch(vs + (j + kAhead) * ldv);
    VF vv[C];
    for (int c = 0; c < C; ++c) vv[c] = LoadKV(d, vs + j * ldv + static_cast<int64_t>(c * N));
    for (int r = 0; r < R; ++r) {
      const VF pv = hn::Set(d, p[r * ldp + j]);
      for (int c = 0; c < C; ++c) acc[r][c] = hn::MulAdd(pv, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) hn::Store(acc[r][c], d, o + r * ldo + static_cast<int64_t>(c * N));
}

template <int R>
HWY_INLINE void QKRows(const float* q, int64_t ldq, const float* kt, int64_t ldk, float* s, int64_t lds,
                       int64_t depth, int64_t cols) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  for (int64_t c0 = 0; c0 < cols; c0 += kMaxCols * N) {
    const int64_t C = std::min<int64_t>(kMaxCols, (cols - c0) / N);
    if (C == 4) QKMicro<R, (kMaxCols >= 4 ? 4 : 1)>(q, ldq, kt + c0, ldk, s + c0, lds, depth);
    else if (C == 3) QKMicro<R, (kMaxCols >= 3 ? 3 : 1)>(q, ldq, kt + c0, ldk, s + c0, lds, depth);
    else if (C == 2) QKMicro<R, 2>(q, ldq, kt + c0, ldk, s + c0, lds, depth);
    else QKMicro<R, 1>(q, ldq, kt + c0, ldk, s + c0, lds, depth);
  }
}

template <int R, class T>
HWY_INLINE void PVRows(const float* p, int64_t ldp, const T* vs, int64_t ldv, float* o, int64_t ldo,
                       const float* alpha, int64_t keys, int64_t width) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  for (int64_t c0 = 0; c0 < width; c0 += kMaxCols * N) {
    const int64_t C = std::min<int64_t>(kMaxCols, (width - c0) / N);
    if (C == 4) PVMicro<R, (kMaxCols >= 4 ? 4 : 1), T>(p, ldp, vs + c0, ldv, o + c0, ldo, alpha, keys);
    else if (C == 3) PVMicro<R, (kMaxCols >= 3 ? 3 : 1), T>(p, ldp, vs + c0, ldv, o + c0, ldo, alpha, keys);
    else if (C == 2) PVMicro<R, 2, T>(p, ldp, vs + c0, ldv, o + c0, ldo, alpha, keys);
    else PVMicro<R, 1, T>(p, ldp, vs + c0, ldv, o + c0, ldo, alpha, keys);
  }
}

// Few query rows: s[r, j] = q[r, :] · k_j read straight from the key rows, so
// each key is loaded once for all R rows and nothing is transposed. Needs depth to be a
// multiple of the vector width.
template <int R, class T>
HWY_INLINE void QKDirect(const float* HWY_RESTRICT q, int64_t ldq, const T* HWY_RESTRICT k, int64_t k_stride,
                         int64_t keys, float* HWY_RESTRICT s, int64_t lds, int64_t depth) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  int64_t j = 0;
  // Two keys per pass: 2R independent FMA chains hide the FMA latency.
  for (; j + 2 <= keys; j += 2) {
    const T* k0 = k + j * k_stride;
    const T* k1 = k0 + k_stride;
    const int64_t row_bytes = depth * static_cast<int64_t>(sizeof(T));
    PrefetchRow(k0 + kAhead * k_stride, row_bytes);
    PrefetchRow(k1 + kAhead * k_stride, row_bytes);
    VF acc0[R], acc1[R];
    for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = hn::Zero(d);
    for (int64_t x = 0; x < depth; x += N) {
      const VF kv0 = LoadKV(d, k0 + x), kv1 = LoadKV(d, k1 + x);
      for (int r = 0; r < R; ++r) {
        const VF qv = hn::Load(d, q + r * ldq + x);
        acc0[r] = hn::MulAdd(qv, kv0, acc0[r]);
        acc1[r] = hn::MulAdd(qv, kv1, acc1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      s[r * lds + j] = hn::GetLane(hn::SumOfLanes(d, acc0[r]));
      s[r * lds + j + 1] = hn::GetLane(hn::SumOfLanes(d, acc1[r]));
    }
  }
  for (; j < keys; ++j) {
    const T* kj = k + j * k_stride;
    PrefetchRow(kj + kAhead * k_stride, depth * static_cast<int64_t>(sizeof(T)));
    VF acc[R];
    for (int r = 0; r < R; ++r) acc[r] = hn::Zero(d);
    for (int64_t x = 0; x < depth; x += N) {
      const VF kv = LoadKV(d, kj + x);
      for (int r = 0; r < R; ++r) acc[r] = hn::MulAdd(hn::Load(d, q + r * ldq + x), kv, acc[r]);
    }
    for (int r = 0; r < R; ++r) s[r * lds + j] = hn::GetLane(hn::SumOfLanes(d, acc[r]));
  }
}

// kt[x, j] = k[j, x] for keys j < keys and x < depth, in 4 x 4 blocks transposed in
// registers: a quarter of the stores of an element-wise copy, whose column-strided
// stores were a sixth of the dense prefill's time.
template <class T>
HWY_INLINE void TransposeKeys(const T* HWY_RESTRICT k, int64_t k_stride, int64_t keys, int64_t depth,
                              float* HWY_RESTRICT kt, int64_t ldk) {
  int64_t j = 0;
#if HWY_TARGET != HWY_SCALAR
  using D4 = hn::Full128<float>;
  const D4 d;
  // Four elements of a key row widened to f32 (bf16 is the high half of an f32).
  const auto load4 = [&](const T* p) {
    if constexpr (std::is_same_v<T, float>) {
      return hn::LoadU(d, p);
    } else {
      const hn::Rebind<uint16_t, D4> du16;
      const hn::Rebind<uint32_t, D4> du32;
      const auto bits = hn::PromoteTo(du32, hn::LoadU(du16, reinterpret_cast<const uint16_t*>(p)));
      return hn::BitCast(d, hn::ShiftLeft<16>(bits));
    }
  };
  const int64_t depth4 = depth / 4 * 4;
  for (; j + 4 <= keys; j += 4) {
    const T* k0 = k + j * k_stride;
    for (int64_t x = 0; x < depth4; x += 4) {
      const auto r0 = load4(k0 + x), r1 = load4(k0 + k_stride + x);
      const auto r2 = load4(k0 + 2 * k_stride + x), r3 = load4(k0 + 3 * k_stride + x);
      const auto t0 = hn::InterleaveLower(d, r0, r1), t1 = hn::InterleaveLower(d, r2, r3);
      const auto t2 = hn::InterleaveUpper(d, r0, r1), t3 = hn::InterleaveUpper(d, r2, r3);
      hn::StoreU(hn::ConcatLowerLower(d, t1, t0), d, kt + x * ldk + j);
      hn::StoreU(hn::ConcatUpperUpper(d, t1, t0), d, kt + (x + 1) * ldk + j);
      hn::StoreU(hn::ConcatLowerLower(d, t3, t2), d, kt + (x + 2) * ldk + j);
      hn::StoreU(hn::ConcatUpperUpper(d, t3, t2), d, kt + (x + 3) * ldk + j);
    }
    for (int64_t x = depth4; x < depth; ++x)
      for (int64_t i = 0; i < 4; ++i) kt[x * ldk + j + i] = KVScalar(k0[i * k_stride + x]);
  }
#endif
  for (; j < keys; ++j) {
    for (int64_t x = 0; x < depth; ++x) kt[x * ldk + j] = KVScalar(k[j * k_stride + x]);
  }
}

// V rows [j < keys] widened into a contiguous f32 tile of row length Dp.
template <class T>
HWY_INLINE void CopyValues(const T* HWY_RESTRICT v, int64_t v_stride, int64_t keys, int64_t Dh, int64_t Dp,
                           float* HWY_RESTRICT vs) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t j = 0; j < keys; ++j) {
    const T* vrow = v + j * v_stride;
    PrefetchRow(vrow + kAhead * v_stride, Dh * static_cast<int64_t>(sizeof(T)));
    float* dst = vs + j * Dp;
    if (Dh == Dp) {
      for (int64_t x = 0; x < Dh; x += N) hn::Store(LoadKV(d, vrow + x), d, dst + x);
    } else {
      for (int64_t x = 0; x < Dh; ++x) dst[x] = KVScalar(vrow[x]);
    }
  }
}

// The thread's prepared copy of key block `block` of the head at kbase, or null.
inline detail::PreparedBlock* FindPrepared(Tile& t, const void* kbase, int64_t block) {
  for (detail::PreparedBlock& p : t.prepared)
    if (p.keys == kbase && p.block == block) return &p;
  return nullptr;
}

// The thread's prepared copy of key block `block` of the head at kbase: found among the
// last kPreparedBlocks, else made in the least recently used slot. V is copied only when
// the caller reads it from the tile (with_v) and no earlier use copied it.
template <class T>
detail::PreparedBlock& PrepareBlock(Tile& t, const T* kbase, int64_t k_stride, const T* vbase, int64_t v_stride,
                                    int64_t block, int64_t k0, int64_t kn, int64_t Dh, int64_t Dp, int64_t Bkp,
                                    bool with_v) {
  detail::PreparedBlock* slot = FindPrepared(t, kbase, block);
  if (!slot) {
    slot = &t.prepared.front();
    for (detail::PreparedBlock& p : t.prepared)
      if (p.last_use < slot->last_use) slot = &p;
    TransposeKeys(kbase + k0 * k_stride, k_stride, kn, Dh, slot->kt.data(), Bkp);
    for (int64_t x = 0; x < Dh; ++x) std::fill(slot->kt.data() + x * Bkp + kn, slot->kt.data() + (x + 1) * Bkp, 0.f);
    slot->keys = kbase;
    slot->block = block;
    slot->has_v = false;
  }
  if (with_v && !slot->has_v) {
    CopyValues(vbase + k0 * v_stride, v_stride, kn, Dh, Dp, slot->vs.data());
    slot->has_v = true;
  }
  slot->last_use = ++t.uses;
  return *slot;
}

// The K and V rows of the key block after the current one, requested into L2 a share at
// a time between the current block's row groups, so that preparing it reads the L2, not
// memory. A block that is neither packed nor among the thread's prepared ones (BigBird's
// random blocks, too few revisits to pay for packing the head) is read cold otherwise: a
// quarter of BigBird's time at 32K on one Zen 4 thread went into preparing blocks.
template <class T>
class NextBlockRows {
 public:
  void start(const T* k, int64_t k_stride, const T* v, int64_t v_stride, int64_t keys, int64_t Dh, bool with_v) {
    k_ = reinterpret_cast<const char*>(k);
    v_ = reinterpret_cast<const char*>(v);
    k_stride_ = k_stride * static_cast<int64_t>(sizeof(T));
    v_stride_ = v_stride * static_cast<int64_t>(sizeof(T));
    lines_per_row_ = (Dh * static_cast<int64_t>(sizeof(T)) + 63) / 64;
    total_ = keys * lines_per_row_ * (with_v ? 2 : 1);
    keys_ = keys;
    next_ = 0;
  }
  void stop() { total_ = next_ = 0; }
  // Requests the next `share` of `parts` equal shares of the block's lines.
  void issue(int64_t share, int64_t parts) {
    const int64_t end = total_ * (share + 1) / parts;
    for (; next_ < end; ++next_) {
      const int64_t row = next_ / lines_per_row_, line = next_ % lines_per_row_;
      const char* p = row < keys_ ? k_ + row * k_stride_ : v_ + (row - keys_) * v_stride_;
      __builtin_prefetch(p + 64 * line, 0, 2);
    }
  }

 private:
  const char *k_ = nullptr, *v_ = nullptr;
  int64_t k_stride_ = 0, v_stride_ = 0, lines_per_row_ = 1, total_ = 0, keys_ = 0, next_ = 0;
};

// Key blocks [first, last) of one key/value head prepared into `packed`, block b at
// b * PackedBlockFloats(): K transposed ([Dh, Bkp], columns past the block's keys zero),
// then V widened ([Bkp, Dp]).
template <class T>
void PackBlocks(const TileProblem& pb, const T* kbase, int64_t k_stride, const T* vbase, int64_t v_stride,
                int64_t first, int64_t last, float* packed) {
  const int64_t Dh = pb.head_dim, Dp = pb.padded_dim, Bk = pb.k_block, Bkp = pb.padded_k_block;
  for (int64_t b = first; b < last; ++b) {
    const int64_t k0 = b * Bk, kn = std::min(Bk, pb.kv_len - k0);
    float* kt = packed + b * detail::PackedBlockFloats(pb);
    TransposeKeys(kbase + k0 * k_stride, k_stride, kn, Dh, kt, Bkp);
    for (int64_t x = 0; x < Dh; ++x) std::fill(kt + x * Bkp + kn, kt + (x + 1) * Bkp, 0.f);
    CopyValues(vbase + k0 * v_stride, v_stride, kn, Dh, Dp, kt + Dp * Bkp);
  }
}

// Runs `rows` query rows already in tile.q (pre-scaled, positions in tile.qpos, running
// state in tile.o / m / l) over the listed key blocks of one key/value head: prepared
// up front in `packed` (PackBlocks), or else as they come (PrepareBlock).
// kDh > 0 fixes the head dimension at compile time (the 64 and 128 fast paths); T is the
// stored key/value element (float or bf16).
template <int64_t kDh, class T>
void AttendBlocks(const TileProblem& pb, Tile& t, int64_t rows, const T* kbase, int64_t k_row_stride,
                  const T* vbase, int64_t v_row_stride, const int32_t* blocks, int64_t nblocks, const float* packed) {
  const int64_t Dh = kDh > 0 ? kDh : pb.head_dim;
  const int64_t Dp = pb.padded_dim, Bk = pb.k_block, Bkp = pb.padded_k_block;
  const ElementRule& rule = *pb.rule;
  // A bf16 cache under MatmulPrecision::bf16: both products on AMX tiles (Dh % 32 == 0).
  const bool amx = std::is_same_v<T, hwy::bfloat16_t> && pb.amx;
  if (amx) detail::amx_begin(t.amx, t.q.data(), Dp, rows, Dh);
  // The rows' lowest and highest positions.
  const auto [q_lo, q_hi] = std::minmax_element(t.qpos.begin(), t.qpos.begin() + rows);
  const int64_t q_first = *q_lo, q_last = *q_hi;
  // Groups of kMaxRows query rows; the next block's rows are requested in 2 x groups
  // shares, one before each group's Q K^T and each group's P V.
  const int64_t groups = std::max<int64_t>(1, rows / kMaxRows);
  NextBlockRows<T> ahead;
  for (int64_t bi = 0; bi < nblocks; ++bi) {
    const int64_t k0 = static_cast<int64_t>(blocks[bi]) * Bk;
    const int64_t kn = std::min(Bk, pb.kv_len - k0);
    // With Dh a multiple of the vector width, V rows are read in place (else widened into
    // a zero-padded f32 copy); K is transposed into a tile for the outer-product GEMM
    // unless there are only a few query rows.
    const bool aligned_dim = Dh == Dp;
    const bool direct_qk = aligned_dim && rows <= kDirectRows;
    // V rows are read once per group of kMaxRows query rows, a vector column of the
    // block at a time. In place they sit a whole token's heads apart (1-4 KiB, so a
    // block's rows share few L1 sets and evict each other between columns and groups):
    // unless a single query row reads them, or with a dim that needs padding, they are
    // first copied (widened) into a contiguous tile, row by row (a GQA group's decode
    // ran 1.5-1.9x faster so).
    const bool copy_v = !amx && (!aligned_dim || rows > 1);
    if (!packed && !amx && !direct_qk && bi + 1 < nblocks && !FindPrepared(t, kbase, blocks[bi + 1])) {
      const int64_t next0 = static_cast<int64_t>(blocks[bi + 1]) * Bk;
      ahead.start(kbase + next0 * k_row_stride, k_row_stride, vbase + next0 * v_row_stride, v_row_stride,
                  std::min(Bk, pb.kv_len - next0), Dh, copy_v);
    } else {
      ahead.stop();
    }
    const float* kt = nullptr;
    const float* vs = nullptr;  // V as a contiguous f32 tile of row length Dp, or null: read in place
    if (packed && !amx) {
      kt = packed + blocks[bi] * detail::PackedBlockFloats(pb);
      vs = kt + Dp * Bkp;
    } else if (!amx && !direct_qk) {
      detail::PreparedBlock& pbk = PrepareBlock(t, kbase, k_row_stride, vbase, v_row_stride, blocks[bi], k0, kn, Dh,
                                                Dp, Bkp, copy_v);
      kt = pbk.kt.data();
      if (copy_v) vs = pbk.vs.data();
    } else if (copy_v) {
      // Slot 0's V tile as scratch: its K stays prepared, its V is copied again on reuse.
      t.prepared.front().has_v = false;
      float* scratch = t.prepared.front().vs.data();
      CopyValues(vbase + k0 * v_row_stride, v_row_stride, kn, Dh, Dp, scratch);
      vs = scratch;
    }

    float* s = t.s.data();
    if (amx) {
      detail::amx_scores(t.amx, rows, Dh, reinterpret_cast<const bf16*>(kbase + k0 * k_row_stride), k_row_stride, kn,
                         s, Bkp, Bkp);
    } else if (direct_qk && !kt) {
      for (int64_t r = 0; r < rows; ++r) std::fill(s + r * Bkp + kn, s + (r + 1) * Bkp, 0.f);
      const T* kb = kbase + k0 * k_row_stride;
      int64_t r0 = 0;
      for (; r0 + kMaxRows <= rows; r0 += kMaxRows)
        QKDirect<kMaxRows>(t.q.data() + r0 * Dp, Dp, kb, k_row_stride, kn, s + r0 * Bkp, Bkp, Dh);
      for (; r0 < rows; ++r0)
        QKDirect<1>(t.q.data() + r0 * Dp, Dp, kb, k_row_stride, kn, s + r0 * Bkp, Bkp, Dh);
    } else {
      int64_t r0 = 0;
      for (; r0 + kMaxRows <= rows; r0 += kMaxRows) {
        ahead.issue(r0 / kMaxRows, 2 * groups);
        QKRows<kMaxRows>(t.q.data() + r0 * Dp, Dp, kt, Bkp, s + r0 * Bkp, Bkp, Dh, Bkp);
      }
      for (; r0 < rows; ++r0) QKRows<1>(t.q.data() + r0 * Dp, Dp, kt, Bkp, s + r0 * Bkp, Bkp, Dh, Bkp);
    }

    auto kpos = [&](int64_t j) -> int64_t { return pb.key_positions ? pb.key_positions[j] : j; };
    const bool full = rule.covers(q_first, q_last, kpos(k0), kpos(k0 + kn - 1));
    for (int64_t r = 0; r < rows; ++r) {
      float* srow = s + r * Bkp;
      if (pb.softcap > 0.f) SoftcapRow(srow, Bkp, pb.softcap);
      MaskRow(srow, Bkp, kn, k0, t.qpos[static_cast<size_t>(r)], full, rule, pb.key_positions, pb.kv_len);
      t.alpha[static_cast<size_t>(r)] = SoftmaxRow(srow, Bkp, t.m[static_cast<size_t>(r)], t.l[static_cast<size_t>(r)]);
    }
    auto pv = [&](const auto* vs, int64_t ldv) {
      int64_t r0 = 0;
      for (; r0 + kMaxRows <= rows; r0 += kMaxRows) {
        ahead.issue(groups + r0 / kMaxRows, 2 * groups);
        PVRows<kMaxRows>(s + r0 * Bkp, Bkp, vs, ldv, t.o.data() + r0 * Dp, Dp, t.alpha.data() + r0, kn, Dp);
      }
      for (; r0 < rows; ++r0) PVRows<1>(s + r0 * Bkp, Bkp, vs, ldv, t.o.data() + r0 * Dp, Dp, t.alpha.data() + r0, kn, Dp);
    };
    if (amx) {
      detail::amx_pv(t.amx, rows, Dh, s, Bkp, Bkp, reinterpret_cast<const bf16*>(vbase + k0 * v_row_stride),
                     v_row_stride, kn);
      const DF d;
      const int64_t N = static_cast<int64_t>(hn::Lanes(d));
      for (int64_t r = 0; r < rows; ++r) {
        const VF a = hn::Set(d, t.alpha[static_cast<size_t>(r)]);
        float* o = t.o.data() + r * Dp;
        const float* add = t.amx.o.data() + r * Dh;
        for (int64_t x = 0; x < Dh; x += N) hn::Store(hn::MulAdd(hn::Load(d, o + x), a, hn::LoadU(d, add + x)), d, o + x);
      }
    } else if (vs) {
      pv(vs, Dp);
    } else {
      pv(vbase + k0 * v_row_stride, v_row_stride);
    }
  }
  if (amx) detail::amx_end();
}

template <class T>
void AttendBlocksTyped(const TileProblem& pb, Tile& t, int64_t rows, const T* kbase, int64_t k_row_stride,
                       const T* vbase, int64_t v_row_stride, const int32_t* blocks, int64_t nblocks,
                       const float* packed) {
  if (pb.head_dim == 64)
    AttendBlocks<64>(pb, t, rows, kbase, k_row_stride, vbase, v_row_stride, blocks, nblocks, packed);
  else if (pb.head_dim == 128)
    AttendBlocks<128>(pb, t, rows, kbase, k_row_stride, vbase, v_row_stride, blocks, nblocks, packed);
  else
    AttendBlocks<0>(pb, t, rows, kbase, k_row_stride, vbase, v_row_stride, blocks, nblocks, packed);
}

// kbase/vbase point at elements of pb.kv_dtype.
void AttendBlocksDispatch(const TileProblem& pb, Tile& t, int64_t rows, const void* kbase, int64_t k_row_stride,
                          const void* vbase, int64_t v_row_stride, const int32_t* blocks, int64_t nblocks,
                          const float* packed) {
  if (pb.kv_dtype == DType::bf16)
    AttendBlocksTyped(pb, t, rows, static_cast<const hwy::bfloat16_t*>(kbase), k_row_stride,
                      static_cast<const hwy::bfloat16_t*>(vbase), v_row_stride, blocks, nblocks, packed);
  else
    AttendBlocksTyped(pb, t, rows, static_cast<const float*>(kbase), k_row_stride, static_cast<const float*>(vbase),
                      v_row_stride, blocks, nblocks, packed);
}

void PackBlocksDispatch(const TileProblem& pb, const void* kbase, int64_t k_row_stride, const void* vbase,
                        int64_t v_row_stride, int64_t first, int64_t last, float* packed) {
  if (pb.kv_dtype == DType::bf16)
    PackBlocks(pb, static_cast<const hwy::bfloat16_t*>(kbase), k_row_stride, static_cast<const hwy::bfloat16_t*>(vbase),
               v_row_stride, first, last, packed);
  else
    PackBlocks(pb, static_cast<const float*>(kbase), k_row_stride, static_cast<const float*>(vbase), v_row_stride,
               first, last, packed);
}

int64_t VectorLanes() { return static_cast<int64_t>(hn::Lanes(DF())); }

}  // namespace subq::attn::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace subq::attn {
namespace {

using detail::Tile;
using detail::TileProblem;

HWY_EXPORT(AttendBlocksDispatch);
HWY_EXPORT(PackBlocksDispatch);
HWY_EXPORT(VectorLanes);

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Visits of the first mask head's query blocks, in the order one thread runs them, that
// find their key block cold: the first visit of each, and every revisit after more than
// `warm` visits to other blocks, by which time its K and V rows have left the caches.
int64_t cold_visits(const BlockMask& mask, int64_t warm) {
  std::vector<int64_t> last(static_cast<size_t>(mask.num_k_blocks()), -1);
  int64_t clock = 0, cold = 0;
  for (int64_t qb = 0; qb < mask.num_q_blocks(); ++qb)
    for (int32_t block : mask.row(0, 0, qb)) {
      int64_t& seen = last[static_cast<size_t>(block)];
      cold += seen < 0 || clock - seen > warm;
      seen = clock++;
    }
  return cold;
}

// p advanced by `elements` of `dtype`.
const void* advance(const void* p, int64_t elements, DType dtype) {
  return static_cast<const std::byte*>(p) + elements * static_cast<int64_t>(dtype_size(dtype));
}

// The calling thread's tile for call number `call`: kept from call to call and sized anew
// only when the problem's sizes change (allocating and zero-filling every thread's tiles
// on the calling thread at each call, ~600 KiB per thread at head dim 128, were serial
// writes and fresh pages in every layer's prefill). Its prepared key blocks are forgotten
// when a new call first takes it: that call's keys may sit where the last call's did.
Tile& thread_tile(int64_t max_rows, const TileProblem& pb, uint64_t call) {
  thread_local Tile t;
  const detail::TileSizes sizes{max_rows, pb.padded_dim, pb.padded_k_block, pb.head_dim, pb.amx};
  if (t.sizes != sizes) {
    const size_t rows = static_cast<size_t>(max_rows);
    t.q.assign(rows * static_cast<size_t>(pb.padded_dim), 0.f);
    // Tiles of more than kDirectRows rows keep kPreparedBlocks key blocks; smaller ones
    // one, used only when the head dim needs padding.
    t.prepared.resize(max_rows > detail::kDirectRows ? detail::kPreparedBlocks : 1);
    for (detail::PreparedBlock& p : t.prepared) {
      p.kt.assign(static_cast<size_t>(pb.padded_dim * pb.padded_k_block), 0.f);
      p.vs.assign(static_cast<size_t>(pb.padded_k_block * pb.padded_dim), 0.f);
    }
    t.s.assign(rows * static_cast<size_t>(pb.padded_k_block), 0.f);
    t.o.assign(rows * static_cast<size_t>(pb.padded_dim), 0.f);
    t.m.assign(rows, 0.f);
    t.l.assign(rows, 0.f);
    t.alpha.assign(rows, 0.f);
    t.qpos.assign(rows, 0);
    if (pb.amx) t.amx.size(max_rows, pb.head_dim, pb.padded_k_block);
    t.sizes = sizes;
  }
  if (t.call != call) {
    for (detail::PreparedBlock& p : t.prepared) {
      p.keys = nullptr;
      p.block = -1;
      p.has_v = false;
      p.last_use = 0;
    }
    t.uses = 0;
    t.call = call;
  }
  return t;
}

// Loads query row r of the tile (scaled, zero-padded) and resets its running state.
void load_query_row(Tile& t, const TileProblem& pb, int64_t r, const float* q, float scale, int64_t pos) {
  float* dst = t.q.data() + r * pb.padded_dim;
  for (int64_t x = 0; x < pb.head_dim; ++x) dst[x] = q[x] * scale;
  std::fill(t.o.data() + r * pb.padded_dim, t.o.data() + (r + 1) * pb.padded_dim, 0.f);
  t.m[static_cast<size_t>(r)] = -std::numeric_limits<float>::infinity();
  t.l[static_cast<size_t>(r)] = 0.f;
  t.qpos[static_cast<size_t>(r)] = pos;
}

}  // namespace

void detail::check_args(const AttentionArgs& a, const char* who) {
  const std::string w = who;
  if (!a.q || !a.k || !a.v || !a.o) throw Error(w + ": q, k, v and o must be non-null");
  if (a.batch < 1 || a.q_len < 0 || a.kv_len < 0)
    throw Error(w + ": batch must be >= 1 and lengths >= 0, found batch " + std::to_string(a.batch));
  if (a.head_dim < 1 || a.head_dim > 512)
    throw Error(w + ": head_dim must be in [1, 512], found " + std::to_string(a.head_dim));
  if (a.kv_heads < 1 || a.q_heads < a.kv_heads || a.q_heads % a.kv_heads != 0)
    throw Error(w + ": q_heads must be a positive multiple of kv_heads, found q_heads " + std::to_string(a.q_heads) +
                ", kv_heads " + std::to_string(a.kv_heads));
  if (!(a.scale > 0.f) || !std::isfinite(a.scale)) throw Error(w + ": scale must be positive and finite");
  if (!(a.softcap >= 0.f)) throw Error(w + ": softcap must be >= 0");
  if (a.kv_dtype != DType::f32 && a.kv_dtype != DType::bf16)
    throw Error(w + ": k and v must be f32 or bf16, found " + dtype_name(a.kv_dtype));
}

const float* AttentionArgs::f32_keys(const char* who) const {
  if (kv_dtype != DType::f32)
    throw Error(std::string(who) + ": needs f32 keys, found " + dtype_name(kv_dtype) +
                " (pass the freshly projected keys, not a bf16 cache)");
  return static_cast<const float*>(k);
}

void flash_attention(const AttentionArgs& a, const BlockMask& mask) {
  detail::check_args(a, "flash_attention");
  if (mask.q_len != a.q_len || mask.kv_len != a.kv_len)
    throw Error("flash_attention: mask is for q_len " + std::to_string(mask.q_len) + ", kv_len " +
                std::to_string(mask.kv_len) + " but the inputs have q_len " + std::to_string(a.q_len) + ", kv_len " +
                std::to_string(a.kv_len));
  if ((mask.batch != 1 && mask.batch != a.batch) || (mask.heads != 1 && mask.heads != a.q_heads))
    throw Error("flash_attention: mask batch/heads must be 1 or " + std::to_string(a.batch) + "/" +
                std::to_string(a.q_heads) + ", found " + std::to_string(mask.batch) + "/" + std::to_string(mask.heads));
  if (mask.row_start.size() != static_cast<size_t>(mask.batch * mask.heads * mask.num_q_blocks() + 1))
    throw Error("flash_attention: mask has an inconsistent row_start array");
  if (a.q_len == 0) return;
  const int64_t lanes = HWY_DYNAMIC_DISPATCH(VectorLanes)();
  const TileProblem pb{a.head_dim, round_up(a.head_dim, lanes), mask.k_block,    round_up(mask.k_block, lanes),
                       a.kv_len,   a.softcap,                   &mask.rule,      a.key_positions,
                       a.kv_dtype, detail::amx_attention(a.kv_dtype, a.head_dim)};
  static std::atomic<uint64_t> calls{0};
  const uint64_t call = ++calls;
  const int64_t nqb = mask.num_q_blocks();
  const int64_t group = a.q_heads / a.kv_heads;
  const int64_t Dh = a.head_dim;
  const int64_t nkb = (a.kv_len + mask.k_block - 1) / mask.k_block;
  const auto kv_head = [&](const void* base, int64_t b, int64_t kvh, int64_t batch_stride) {
    return advance(base, b * batch_stride + kvh * Dh, a.kv_dtype);
  };
  // A key block prepared (K transposed, V copied) from cold memory costs a read of rows a
  // token's heads apart. That is every visit where blocks come in no local order (top-k
  // and random blocks; the blocks of long causal rows) and, under GQA, every query head's
  // first visit. When a KV head's cold visits would be four times its blocks or more,
  // every block is prepared once up front instead, in a sequential pass, into a buffer of
  // one KV head's keys and values in f32 (fewer, and the extra pass over the head costs
  // what it saves: BigBird's two random blocks per row ran 1.2x slower packed at 128K);
  // windows and neighborhoods, whose consecutive rows share their blocks, read them warm
  // and skip it. A KV head's query blocks must still fill the threads.
  constexpr int64_t kWarmBytes = int64_t{2} << 20;  // a thread's share of L2 + L3, conservatively
  const int64_t warm = kWarmBytes / (2 * mask.k_block * Dh * static_cast<int64_t>(dtype_size(a.kv_dtype)));
  Tensor packed;
  if (!pb.amx && mask.q_block > detail::kDirectRows && nkb > 0 && group * nqb >= 2 * num_threads() &&
      group * cold_visits(mask, warm) >= 4 * nkb)
    packed = Tensor::empty(DType::f32, {nkb * detail::PackedBlockFloats(pb)});

  // Items [first, first + count) of the (batch, head, query block) space.
  const auto attend = [&](int64_t first, int64_t count, const float* blocks_ready) {
    parallel_for_each(count, [&](int64_t i) {
      const int64_t item = first + i;
      Tile& t = thread_tile(mask.q_block, pb, call);
      const int64_t qb = item % nqb;
      const int64_t h = (item / nqb) % a.q_heads;
      const int64_t b = item / (nqb * a.q_heads);
      const int64_t i0 = qb * mask.q_block;
      const int64_t rows = std::min(mask.q_block, a.q_len - i0);
      for (int64_t r = 0; r < rows; ++r)
        load_query_row(t, pb, r, a.q + b * a.q_batch_stride + (i0 + r) * a.q_row_stride + h * Dh, a.scale,
                       mask.q_offset + i0 + r);
      const std::span<const int32_t> blocks = mask.row(b, h, qb);
      const int64_t kvh = h / group;
      HWY_DYNAMIC_DISPATCH(AttendBlocksDispatch)(pb, t, rows, kv_head(a.k, b, kvh, a.k_batch_stride), a.k_row_stride,
                                                 kv_head(a.v, b, kvh, a.v_batch_stride), a.v_row_stride, blocks.data(),
                                                 static_cast<int64_t>(blocks.size()), blocks_ready);
      for (int64_t r = 0; r < rows; ++r) {
        float* out = a.o + b * a.o_batch_stride + (i0 + r) * a.o_row_stride + h * Dh;
        const float l = t.l[static_cast<size_t>(r)];
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const float* acc = t.o.data() + r * pb.padded_dim;
        for (int64_t x = 0; x < Dh; ++x) out[x] = acc[x] * inv;
      }
    });
  };
  if (!packed.defined()) {
    attend(0, a.batch * a.q_heads * nqb, nullptr);
    return;
  }
  // One KV head at a time: its blocks prepared, then its query heads' items (consecutive
  // in the item order).
  float* ready = packed.mutable_data<float>();
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t kvh = 0; kvh < a.kv_heads; ++kvh) {
      parallel_for(nkb, 4, [&](int64_t first, int64_t last) {
        HWY_DYNAMIC_DISPATCH(PackBlocksDispatch)(pb, kv_head(a.k, b, kvh, a.k_batch_stride), a.k_row_stride,
                                                 kv_head(a.v, b, kvh, a.v_batch_stride), a.v_row_stride, first, last,
                                                 ready);
      });
      attend((b * a.q_heads + kvh * group) * nqb, group * nqb, ready);
    }
}

void flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const BlockMask& mask,
                     const AttentionOptions& options, const Tensor& out) {
  const char* names[] = {"flash_attention: q", "flash_attention: k", "flash_attention: v", "flash_attention: out"};
  const Tensor* ts[] = {&q, &k, &v, &out};
  for (int i = 0; i < 4; ++i) {
    if (i == 1 || i == 2) {
      if (ts[i]->dtype() != DType::f32 && ts[i]->dtype() != DType::bf16)
        throw Error(std::string(names[i]) + " must be f32 or bf16, found " + ts[i]->str());
    } else {
      check_dtype(*ts[i], DType::f32, names[i]);
    }
    check_contiguous(*ts[i], names[i]);
    if (ts[i]->ndim() != 4) throw Error(std::string(names[i]) + " must be 4-D [B, T, H, Dh], found " + ts[i]->str());
  }
  const int64_t B = q.dim(0), Tq = q.dim(1), Hq = q.dim(2), Dh = q.dim(3);
  const int64_t Tk = k.dim(1), Hkv = k.dim(2);
  check_shape(k, Shape{B, Tk, Hkv, Dh}, "flash_attention: k");
  check_shape(v, Shape{B, Tk, Hkv, Dh}, "flash_attention: v");
  if (v.dtype() != k.dtype())
    throw Error("flash_attention: k and v must have one dtype, found " + k.str() + " and " + v.str());
  check_shape(out, Shape{B, Tq, Hq, Dh}, "flash_attention: out");
  AttentionArgs a;
  a.q = q.data<float>();
  a.q_batch_stride = Tq * Hq * Dh;
  a.q_row_stride = Hq * Dh;
  a.k = k.raw_data();
  a.v = v.raw_data();
  a.kv_dtype = k.dtype();
  a.k_batch_stride = a.v_batch_stride = Tk * Hkv * Dh;
  a.k_row_stride = a.v_row_stride = Hkv * Dh;
  a.o = out.mutable_data<float>();
  a.o_batch_stride = a.q_batch_stride;
  a.o_row_stride = a.q_row_stride;
  a.batch = B;
  a.q_len = Tq;
  a.kv_len = Tk;
  a.q_heads = Hq;
  a.kv_heads = Hkv;
  a.head_dim = Dh;
  a.scale = options.scale > 0.f ? options.scale : 1.f / std::sqrt(static_cast<float>(Dh));
  a.softcap = options.softcap;
  flash_attention(a, mask);
}

}  // namespace subq::attn
#endif  // HWY_ONCE
