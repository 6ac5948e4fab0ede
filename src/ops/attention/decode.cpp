// Split-KV decode (FlashDecoding) on the CPU: a few query rows per KV head against a long
// KV cache, the keys split into ranges run in parallel and merged by log-sum-exp.
//
// Decode reads every cached key and value once per step, so it should run at memory
// bandwidth; with a bf16 cache the arithmetic per byte doubles and the kernel must be lean
// to keep up. Three choices make it so:
//  - Pair order. K and V rows are read 2N elements at a time (N = lanes of f32) as two
//    f32 vectors. A bf16 pair is one load of 32-bit words whose low halves, shifted up,
//    are the even elements and whose high halves, masked, are the odd ones: two
//    instructions widen 2N values, with no cross-lane shuffle. The queries and outputs
//    are kept in the same even/odd order within each 2N (f32 rows are used as stored), so
//    dot products and P·V never reorder anything; outputs return to element order once
//    at the end.
//  - Eight accumulators per pass (R rows x 8 / R keys) whose sums are reduced together,
//    four at a time, by interleaving: about three instructions per dot product instead
//    of a horizontal sum each.
//  - A work item holds each KV head's queries and running state for its whole key range:
//    nothing is reloaded or copied per key block.
// Blocks are visited in address order (every head of a block before the next block),
// prefetching the next block's span into L2 as the current one is read, and each head's
// V rows into L1 while its Q·K runs. On the AVX2 Zen 3 against the previous decode (the
// flash executor's tile kernel, one block at a time): bf16 GQA-4 1.15x, bf16 MHA 1.25x,
// bf16 GQA-12 1.35x, f32 GQA-4 1.05x at 32K keys.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/ops/attention/decode.cpp"
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "src/core/parallel.h"
#include "src/core/scratch.h"
#include "src/ops/attention/flash.h"
#include "src/ops/attention/score_rows-inl.h"

#ifndef SUBQ_ATTN_DECODE_SHARED
#define SUBQ_ATTN_DECODE_SHARED
namespace subq::attn::detail {

// Next lines of the following key block to prefetch into L2: per_key bytes after each key
// read.
struct PrefetchSpan {
  const char* next = nullptr;
  int64_t per_key = 0;
};

// One KV head's query rows against one key block.
struct DecodeStep {
  int64_t rows;                // the head's query rows (its group's heads x tokens)
  int64_t head_dim, pair_dim;  // Dh, and Dh rounded up to whole pairs of vectors
  const float* q;              // [rows, pair_dim], scaled, in pair order, zero-padded
  float* o;                    // [rows, pair_dim] running output, pair order
  float *m, *l;                // [rows] running max and sum
  const int64_t* qpos;         // [rows] positions
  const void *k, *v;           // the block's first key / value row of this head
  int64_t k_stride, v_stride;  // elements between rows
  int64_t block;               // key slots per block (a multiple of the vector width)
  int64_t k0, kn;              // the block's first key slot and its number of keys
  bool full;                   // the rule allows every (row, key) pair of the block
  const ElementRule* rule;
  const int32_t* key_positions;
  int64_t kv_len;
  float softcap;
  PrefetchSpan k_ahead, v_ahead;
  DType dtype;  // of k and v: f32 or bf16
  float *s, *alpha, *tile;  // scratch: scores [rows, block], [rows], [block, pair_dim]
};

// Where element x of a row sits in pair order with N lanes: f32 rows keep element order;
// bf16 rows hold each 2N elements' even ones first, then the odd ones.
// (N is a power of two.)
inline int64_t pair_position(int64_t x, int64_t lanes, bool bf16) {
  if (!bf16) return x;
  const int64_t w = x & (2 * lanes - 1);
  return x - w + (w & 1) * lanes + (w >> 1);
}

}  // namespace subq::attn::detail
#endif

HWY_BEFORE_NAMESPACE();
namespace subq::attn::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::DecodeStep;
using detail::PrefetchSpan;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// 2N elements at p as two f32 vectors in pair order.
HWY_INLINE void LoadPair(const float* HWY_RESTRICT p, VF& a, VF& b) {
  const DF d;
  a = hn::LoadU(d, p);
  b = hn::LoadU(d, p + hn::Lanes(d));
}
HWY_INLINE void LoadPair(const hwy::bfloat16_t* HWY_RESTRICT p, VF& a, VF& b) {
  const DF d;
  const hn::RebindToUnsigned<DF> du;
  const auto words = hn::LoadU(du, reinterpret_cast<const uint32_t*>(p));
  a = hn::BitCast(d, hn::ShiftLeft<16>(words));
  b = hn::BitCast(d, hn::And(words, hn::Set(du, 0xFFFF0000u)));
}

HWY_INLINE void Prefetch(PrefetchSpan* span, int64_t keys) {
  if (!span) return;
  const int64_t bytes = keys * span->per_key;
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(span->next + b, 0, 2);
  span->next += bytes;
}

#if HWY_TARGET != HWY_SCALAR
// The sum of v's 128-bit blocks.
template <class D>
HWY_INLINE hn::Vec<hn::Full128<float>> SumBlocks(D d, hn::Vec<D> v) {
  if constexpr (hn::MaxLanes(d) <= 4) {
    return v;
  } else {
    const hn::Half<D> dh;
    return SumBlocks(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)));
  }
}
#endif

// Scores of 8 accumulators acc[r * KP + kk] (row r, key j + kk), stored to s[r * lds + j + kk].
template <int R, int KP>
HWY_INLINE void StoreSums(const VF (&acc)[R * KP], float* HWY_RESTRICT s, int64_t lds) {
#if HWY_TARGET == HWY_SCALAR
  for (int r = 0; r < R; ++r)
    for (int kk = 0; kk < KP; ++kk) s[r * lds + kk] = hn::GetLane(acc[r * KP + kk]);
#else
  static_assert(R * KP % 4 == 0);
  const DF d;
  const hn::Repartition<double, DF> dd;
  for (int g = 0; g < R * KP; g += 4) {
    // Per 128-bit block: [a0+a2, b0+b2, a1+a3, b1+b3], then [a, b, c, e] block sums.
    const VF ab = hn::Add(hn::InterleaveLower(d, acc[g], acc[g + 1]), hn::InterleaveUpper(d, acc[g], acc[g + 1]));
    const VF ce = hn::Add(hn::InterleaveLower(d, acc[g + 2], acc[g + 3]), hn::InterleaveUpper(d, acc[g + 2], acc[g + 3]));
    const auto ab2 = hn::BitCast(dd, ab), ce2 = hn::BitCast(dd, ce);
    auto sums = hn::Add(hn::BitCast(d, hn::InterleaveLower(dd, ab2, ce2)), hn::BitCast(d, hn::InterleaveUpper(dd, ab2, ce2)));
    const hn::Full128<float> d4;
    const auto four = SumBlocks(d, sums);
    if constexpr (KP >= 4) {
      hn::StoreU(four, d4, s + (g / KP) * lds + g % KP);
    } else {
      const hn::Full64<float> d2;
      hn::StoreU(hn::LowerHalf(d2, four), d2, s + (g / KP) * lds);
      hn::StoreU(hn::UpperHalf(d2, four), d2, s + (g / KP + 1) * lds);
    }
  }
#endif
}

// s[r, j] = q[r] · k_j for R rows (q in pair order, `depth` floats: whole pairs) and keys
// j < keys, 8 / R keys per pass so that eight independent accumulators hide the FMA
// latency. Prefetches `ahead` spans as it goes.
template <int R, class T>
HWY_INLINE void QKRows(const float* HWY_RESTRICT q, int64_t ldq, const T* HWY_RESTRICT k, int64_t k_stride,
                       int64_t keys, float* HWY_RESTRICT s, int64_t lds, int64_t depth, PrefetchSpan* k_ahead,
                       PrefetchSpan* v_ahead) {
  constexpr int KP = 8 / R;
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  int64_t j = 0;
  for (; j + KP <= keys; j += KP) {
    Prefetch(k_ahead, KP);
    Prefetch(v_ahead, KP);
    VF acc[R * KP];
    for (VF& a : acc) a = hn::Zero(d);
    for (int64_t x = 0; x < depth; x += 2 * N) {
      for (int kk = 0; kk < KP; ++kk) {
        VF ka, kb;
        LoadPair(k + (j + kk) * k_stride + x, ka, kb);
        for (int r = 0; r < R; ++r) {
          VF& a = acc[r * KP + kk];
          a = hn::MulAdd(hn::Load(d, q + r * ldq + x), ka, a);
          a = hn::MulAdd(hn::Load(d, q + r * ldq + x + N), kb, a);
        }
      }
    }
    StoreSums<R, KP>(acc, s + j, lds);
  }
  for (; j < keys; ++j) {
    Prefetch(k_ahead, 1);
    Prefetch(v_ahead, 1);
    VF acc[R];
    for (VF& a : acc) a = hn::Zero(d);
    for (int64_t x = 0; x < depth; x += 2 * N) {
      VF ka, kb;
      LoadPair(k + j * k_stride + x, ka, kb);
      for (int r = 0; r < R; ++r) {
        acc[r] = hn::MulAdd(hn::Load(d, q + r * ldq + x), ka, acc[r]);
        acc[r] = hn::MulAdd(hn::Load(d, q + r * ldq + x + N), kb, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) s[r * lds + j] = hn::GetLane(hn::SumOfLanes(d, acc[r]));
  }
}

// o[r] = o[r] * alpha[r] + sum_{j < keys} p[r, j] v_j for R rows over `depth` floats
// (whole pairs), P pairs of columns per pass: 2 R P accumulators (eight).
template <int R, class T>
HWY_INLINE void PVRows(const float* HWY_RESTRICT p, int64_t ldp, const T* HWY_RESTRICT v, int64_t v_stride,
                       int64_t keys, float* HWY_RESTRICT o, int64_t ldo, const float* HWY_RESTRICT alpha,
                       int64_t depth) {
  constexpr int P = 4 / R;
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto pass = [&](int64_t x0, auto pairs) {
    constexpr int kPairs = decltype(pairs)::value;
    VF acc[R][2 * kPairs];
    for (int r = 0; r < R; ++r) {
      const VF a = hn::Set(d, alpha[r]);
      for (int c = 0; c < 2 * kPairs; ++c) acc[r][c] = hn::Mul(a, hn::Load(d, o + r * ldo + x0 + c * N));
    }
    for (int64_t j = 0; j < keys; ++j) {
      VF vv[2 * kPairs];
      for (int c = 0; c < kPairs; ++c) LoadPair(v + j * v_stride + x0 + 2 * c * N, vv[2 * c], vv[2 * c + 1]);
      for (int r = 0; r < R; ++r) {
        const VF pv = hn::Set(d, p[r * ldp + j]);
        for (int c = 0; c < 2 * kPairs; ++c) acc[r][c] = hn::MulAdd(pv, vv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 2 * kPairs; ++c) hn::Store(acc[r][c], d, o + r * ldo + x0 + c * N);
  };
  int64_t x0 = 0;
  for (; x0 + 2 * P * N <= depth; x0 += 2 * P * N) pass(x0, std::integral_constant<int, P>());
  for (; x0 < depth; x0 += 2 * N) pass(x0, std::integral_constant<int, 1>());
}

// Rows j < keys of src, whose head_dim is not whole pairs, widened into dst ([keys,
// pair_dim] f32, pair order, zero-padded), element by element.
template <class T>
HWY_INLINE void WidenRows(const T* HWY_RESTRICT src, int64_t stride, int64_t keys, int64_t head_dim,
                          int64_t pair_dim, float* HWY_RESTRICT dst) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  for (int64_t j = 0; j < keys; ++j) {
    const T* row = src + j * stride;
    float* out = dst + j * pair_dim;
    std::fill_n(out, pair_dim, 0.f);
    for (int64_t x = 0; x < head_dim; ++x) {
      if constexpr (std::is_same_v<T, float>) out[x] = row[x];
      else out[detail::pair_position(x, N, true)] = hwy::F32FromBF16(row[x]);
    }
  }
}

// Runs `rows` rows in groups of 4, then 2, then 1: fn(r0, integral_constant<R>).
template <class Fn>
HWY_INLINE void ForRowGroups(int64_t rows, const Fn& fn) {
  int64_t r0 = 0;
  for (; r0 + 4 <= rows; r0 += 4) fn(r0, std::integral_constant<int, 4>());
  for (; r0 + 2 <= rows; r0 += 2) fn(r0, std::integral_constant<int, 2>());
  for (; r0 < rows; ++r0) fn(r0, std::integral_constant<int, 1>());
}

template <class T>
void DecodeBlockTyped(const DecodeStep& st) {
  const int64_t Bk = st.block, Dh = st.head_dim, Dp = st.pair_dim;
  const T* k = static_cast<const T*>(st.k);
  const T* v = static_cast<const T*>(st.v);
  PrefetchSpan k_ahead = st.k_ahead, v_ahead = st.v_ahead;
  // Rows are read in place, or widened (padded) into the tile first when their length is
  // not whole pairs (WidenRows).
  const auto qk = [&](const auto* keys, int64_t stride) {
    ForRowGroups(st.rows, [&](int64_t r0, auto group_rows) {
      const bool first = r0 == 0;  // the first group prefetches for all
      QKRows<decltype(group_rows)::value>(st.q + r0 * Dp, Dp, keys, stride, st.kn, st.s + r0 * Bk, Bk, Dp,
                                          first && k_ahead.next ? &k_ahead : nullptr,
                                          first && v_ahead.next ? &v_ahead : nullptr);
    });
  };
  // The span prefetches bring the block to L2; this head's V rows come on to L1 while Q·K
  // runs (a head's rows are a token's heads apart, which the hardware prefetchers do not
  // follow). P·V then reads them in place, a pair of columns per pass: with them in L1,
  // 1.1x faster than widening them into a contiguous tile first (bf16 and f32 GQA-4).
  for (int64_t j = 0; j < st.kn; ++j)
    for (int64_t b = 0; b < Dh * static_cast<int64_t>(sizeof(T)); b += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(v + j * st.v_stride) + b);
  if (Dh == Dp) {
    qk(k, st.k_stride);
  } else {
    WidenRows(k, st.k_stride, st.kn, Dh, Dp, st.tile);
    qk(static_cast<const float*>(st.tile), Dp);
  }
  for (int64_t r = 0; r < st.rows; ++r) {
    float* srow = st.s + r * Bk;
    std::fill(srow + st.kn, srow + Bk, 0.f);
    if (st.softcap > 0.f) SoftcapRow(srow, Bk, st.softcap);
    MaskRow(srow, Bk, st.kn, st.k0, st.qpos[r], st.full, *st.rule, st.key_positions, st.kv_len);
    st.alpha[r] = SoftmaxRow(srow, Bk, st.m[r], st.l[r]);
  }
  const auto pv = [&](const auto* values, int64_t stride) {
    ForRowGroups(st.rows, [&](int64_t r0, auto group_rows) {
      PVRows<decltype(group_rows)::value>(st.s + r0 * Bk, Bk, values, stride, st.kn, st.o + r0 * Dp, Dp, st.alpha + r0, Dp);
    });
  };
  if (Dh == Dp) {
    pv(v, st.v_stride);
  } else {
    WidenRows(v, st.v_stride, st.kn, Dh, Dp, st.tile);
    pv(static_cast<const float*>(st.tile), Dp);
  }
}

void DecodeBlock(const DecodeStep& st) {
  if (st.dtype == DType::bf16) DecodeBlockTyped<hwy::bfloat16_t>(st);
  else DecodeBlockTyped<float>(st);
}

int64_t DecodeLanes() { return static_cast<int64_t>(hn::Lanes(DF())); }

}  // namespace subq::attn::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace subq::attn {
namespace {

HWY_EXPORT(DecodeBlock);
HWY_EXPORT(DecodeLanes);

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct ItemBuffers;
struct ItemPositions;
struct SplitResults;

// A work item's buffers, zeroed, from its thread's scratch: every KV head's rows
// (queries, outputs, running max and sum), then one block's scores, rescales and tile.
struct ItemWorkspace {
  Piece q, o, m, l, s, alpha, tile;
  ItemWorkspace(int64_t head_rows, int64_t rows, int64_t block, int64_t Dp)
      : positions_(static_cast<size_t>(rows)),
        memory_({{&q, head_rows * Dp},
                 {&o, head_rows * Dp},
                 {&m, head_rows},
                 {&l, head_rows},
                 {&s, rows * block},
                 {&alpha, rows},
                 {&tile, block * Dp}}) {}
  int64_t* qpos() const { return positions_.data(); }  // the rows' query positions

 private:
  Scratch<ItemPositions, int64_t> positions_;
  ZeroedPieces<ItemBuffers> memory_;
};

}  // namespace

void decode_attention(const AttentionArgs& a, const ElementRule& rule, int64_t q_offset, int64_t splits) {
  detail::check_args(a, "decode_attention");
  if (a.q_len == 0) return;
  constexpr int64_t kMaxTileRows = 32;
  const int64_t lanes = HWY_DYNAMIC_DISPATCH(DecodeLanes)();
  const bool bf16 = a.kv_dtype == DType::bf16;
  const int64_t group = a.q_heads / a.kv_heads, H = a.kv_heads;
  const int64_t Dh = a.head_dim, Dp = round_up(Dh, 2 * lanes), Tq = a.q_len;
  // Rows per KV head: every query row of every head sharing it, so each key block is
  // read once for the whole group.
  const int64_t rows_total = group * Tq;
  // Key slots per block: the block's keys and values over every head take ~128 KiB, so
  // that it and the next one, prefetched while it is read, fit a 512 KiB L2 together
  // (bf16 GQA decode on the Zen 3: 32 keys of 4 KiB ran 1.07x faster than 64).
  const int64_t key_bytes = 2 * H * Dh * static_cast<int64_t>(dtype_size(a.kv_dtype));
  int64_t kBlock = 64;
  while (kBlock > 16 && kBlock * key_bytes > (int64_t{128} << 10)) kBlock /= 2;
  const int64_t row_chunks = (rows_total + kMaxTileRows - 1) / kMaxTileRows;
  const int64_t chunk_rows = std::min(kMaxTileRows, rows_total);
  const int64_t nkb = std::max<int64_t>(1, (a.kv_len + kBlock - 1) / kBlock);
  if (splits <= 0) {
    const int64_t items = a.batch * row_chunks;
    splits = (2 * num_threads() + items - 1) / items;
  }
  splits = std::clamp<int64_t>(splits, 1, nkb);
  // Partial results per (b, hq, t, split): unnormalised output, running max and sum.
  // Buffers come from per-thread scratch kept between calls: at a few hundred keys a
  // step's work per thread is a few microseconds, and allocating per call cost 5% (12
  // MHA layers of 12 x 64 at 512 keys, two Zen 4 threads: 410 -> 388 us).
  const size_t parts = static_cast<size_t>(a.batch * a.q_heads * Tq * splits);
  const Scratch<SplitResults, float> split_results(parts * static_cast<size_t>(Dh + 2));
  float* part_o = split_results.data();
  float* part_m = part_o + parts * static_cast<size_t>(Dh);
  float* part_l = part_m + parts;
  auto part_index = [&](int64_t b, int64_t h, int64_t t, int64_t s) {
    return static_cast<size_t>(((b * a.q_heads + h) * Tq + t) * splits + s);
  };
  const int64_t elem = static_cast<int64_t>(dtype_size(a.kv_dtype));
  const auto kpos = [&](int64_t j) -> int64_t { return a.key_positions ? a.key_positions[j] : j; };
  // A work item is (batch, row chunk, key split) over every KV head: at each key block of
  // its split, every head's rows attend to it in turn. A token's heads lie together in
  // the cache, so the item reads keys and values in address order: while head h walks
  // the block it prefetches the h-th part of the next block's span. One head's rows
  // alone, a token's heads apart, stream at half the bandwidth (13 vs 28 GB/s on two
  // threads of the AVX2 Zen 3).
  parallel_for_each(a.batch * row_chunks * splits, [&](int64_t item) {
    const ItemWorkspace w(H * chunk_rows, chunk_rows, kBlock, Dp);
    const int64_t s = item % splits;
    const int64_t chunk = (item / splits) % row_chunks;
    const int64_t b = item / (splits * row_chunks);
    const int64_t kb0 = nkb * s / splits, kb1 = std::min(nkb * (s + 1) / splits, (a.kv_len + kBlock - 1) / kBlock);
    const int64_t r0 = chunk * kMaxTileRows;
    const int64_t rows = std::min(kMaxTileRows, rows_total - r0);
    const auto* k_base = static_cast<const char*>(a.k) + b * a.k_batch_stride * elem;
    const auto* v_base = static_cast<const char*>(a.v) + b * a.v_batch_stride * elem;
    // Row r of KV head kvh is query head kvh * group + (r0 + r) / Tq at token (r0 + r) % Tq.
    const auto q_head = [&](int64_t kvh, int64_t r) { return kvh * group + (r0 + r) / Tq; };
    for (int64_t r = 0; r < rows; ++r) w.qpos()[r] = q_offset + (r0 + r) % Tq;
    for (int64_t kvh = 0; kvh < H; ++kvh)
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t hr = kvh * chunk_rows + r;
        const float* q = a.q + b * a.q_batch_stride + (r0 + r) % Tq * a.q_row_stride + q_head(kvh, r) * Dh;
        float* qr = w.q.data() + hr * Dp;
        std::fill_n(qr, Dp, 0.f);
        for (int64_t x = 0; x < Dh; ++x) qr[detail::pair_position(x, lanes, bf16)] = q[x] * a.scale;
        std::fill_n(w.o.data() + hr * Dp, Dp, 0.f);
        w.m[hr] = -std::numeric_limits<float>::infinity();
        w.l[hr] = 0.f;
      }
    const auto [q_lo, q_hi] = std::minmax_element(w.qpos(), w.qpos() + rows);
    for (int64_t kb = kb0; kb < kb1; ++kb) {
      const int64_t k0 = kb * kBlock, kn = std::min(kBlock, a.kv_len - k0);
      const int64_t next = k0 + kBlock, next_n = std::min(kBlock, a.kv_len - next);
      for (int64_t kvh = 0; kvh < H; ++kvh) {
        // The kvh-th part of the next block's span, spread over this block's keys.
        const auto ahead = [&](const char* base, int64_t stride) {
          if (kb + 1 >= kb1) return detail::PrefetchSpan{};
          const int64_t span = next_n * stride * elem;
          return detail::PrefetchSpan{base + next * stride * elem + span * kvh / H,
                                      round_up((span / H + kn - 1) / kn, 64)};
        };
        const int64_t hr = kvh * chunk_rows;
        detail::DecodeStep st{};
        st.rows = rows;
        st.head_dim = Dh;
        st.pair_dim = Dp;
        st.q = w.q.data() + hr * Dp;
        st.o = w.o.data() + hr * Dp;
        st.m = w.m.data() + hr;
        st.l = w.l.data() + hr;
        st.qpos = w.qpos();
        st.k = k_base + (k0 * a.k_row_stride + kvh * Dh) * elem;
        st.v = v_base + (k0 * a.v_row_stride + kvh * Dh) * elem;
        st.k_stride = a.k_row_stride;
        st.v_stride = a.v_row_stride;
        st.block = kBlock;
        st.k0 = k0;
        st.kn = kn;
        st.full = rule.covers(*q_lo, *q_hi, kpos(k0), kpos(k0 + kn - 1));
        st.rule = &rule;
        st.key_positions = a.key_positions;
        st.kv_len = a.kv_len;
        st.softcap = a.softcap;
        st.k_ahead = ahead(k_base, a.k_row_stride);
        st.v_ahead = ahead(v_base, a.v_row_stride);
        st.dtype = a.kv_dtype;
        st.s = w.s.data();
        st.alpha = w.alpha.data();
        st.tile = w.tile.data();
        HWY_DYNAMIC_DISPATCH(DecodeBlock)(st);
      }
    }
    // The item's partial results, outputs back in element order (an empty split leaves
    // m = -inf, l = 0: the merge skips it).
    for (int64_t kvh = 0; kvh < H; ++kvh)
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t hr = kvh * chunk_rows + r;
        const size_t p = part_index(b, q_head(kvh, r), (r0 + r) % Tq, s);
        part_m[p] = w.m[hr];
        part_l[p] = w.l[hr];
        const float* o = w.o.data() + hr * Dp;
        float* out = part_o + p * static_cast<size_t>(Dh);
        for (int64_t x = 0; x < Dh; ++x) out[x] = o[detail::pair_position(x, lanes, bf16)];
      }
  });
  // Log-sum-exp merge of the splits: weights exp(m_s - max_s m_s).
  parallel_for(a.batch * a.q_heads * Tq, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t tq = row % Tq, h = (row / Tq) % a.q_heads, b = row / (Tq * a.q_heads);
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < splits; ++s) m = std::max(m, part_m[part_index(b, h, tq, s)]);
      float* out = a.o + b * a.o_batch_stride + tq * a.o_row_stride + h * Dh;
      std::fill_n(out, Dh, 0.f);
      if (m == -std::numeric_limits<float>::infinity()) continue;
      float l = 0.f;
      for (int64_t s = 0; s < splits; ++s) {
        const size_t p = part_index(b, h, tq, s);
        if (part_m[p] == -std::numeric_limits<float>::infinity()) continue;
        const float w = std::exp(part_m[p] - m);
        l += w * part_l[p];
        const float* po = part_o + p * static_cast<size_t>(Dh);
        for (int64_t x = 0; x < Dh; ++x) out[x] += w * po[x];
      }
      const float inv = 1.f / l;
      for (int64_t x = 0; x < Dh; ++x) out[x] *= inv;
    }
  });
}

}  // namespace subq::attn
#endif  // HWY_ONCE
