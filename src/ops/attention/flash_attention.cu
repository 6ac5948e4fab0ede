// FlashAttention-2 style forward: one CTA of 4 warps per (128 queries, head, batch);
// each warp owns 32 query rows (two m16 tiles), so K/V shared-memory reads are spread
// over twice the arithmetic of 16 rows (D = 256 keeps 64 queries, 16 rows per warp: 32
// rows' f32 accumulator would not fit in registers). K/V tiles of 64 keys (32 at D = 256
// or in CTAs of 2 warps) are double-buffered with cp.async; Q, K and V sit in shared
// memory with an XOR swizzle (16-byte chunk ^ row % 8) so every ldmatrix hits 32
// distinct banks. Scores stay in registers: the S accumulator fragment of QK^T is
// exactly the A fragment of PV once packed to bf16.
// Dense, causal and block-sparse are one kernel: they differ only in which key tiles a
// CTA visits (all, those at or below the diagonal, or those its BlockMask row lists)
// and in the element test applied to tiles that are not wholly allowed. A mask of
// 64-query blocks keeps 32 rows per warp too: when consecutive rows share most of their
// key blocks, two rows run per CTA (warps 0-1 the first, 2-3 the second) over the union
// of their blocks, each tile loaded once for both and skipped by the warps whose row
// does not list it; otherwise a row runs alone in a CTA of 2 warps.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"
#include "src/core/cuda/mma.cuh"
#include "src/ops/attention/flash_attention.h"
#include "src/ops/attention/flash_attention_device.cuh"
#include "src/ops/attention/flash_attention_sm90.h"

namespace subq::cuda {
namespace {
using flash::DeviceRule;
using flash::Keys;
using flash::KeyTiles;
using flash::Params;
using flash::Tile;

// Keys per K/V tile for CTAs of kWarps warps: 64; 32 for D = 256 or CTAs of 2 warps, so
// that the double-buffered tiles leave room for 8 warps per SM (two CTAs of 4 warps, four
// of 2; fewer could not hide the load latency).
template <int D, int kWarps>
constexpr int kKeyRows = D <= 128 && kWarps == 4 ? 64 : 32;
constexpr int kMaskKeyBlock = 64;  // a BlockMask's key blocks are multiples of this on the GPU

template <int D, int kBlockM, Keys kKeys, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) flash_forward_kernel(const Params p) {
  constexpr int kThreads = kWarps * 32;
  constexpr bool kListed = kKeys == Keys::listed || kKeys == Keys::paired;
  constexpr int kRowsPerWarp = kBlockM / kWarps;
  constexpr int kMTiles = kRowsPerWarp / 16;
  constexpr int kBlockN = kKeyRows<D, kWarps>;
  extern __shared__ __align__(128) unsigned char smem[];
  auto* sQ = reinterpret_cast<__nv_bfloat16*>(smem);
  auto* sK = sQ + kBlockM * D;      // two buffers of kBlockN x D
  auto* sV = sK + 2 * kBlockN * D;  // two buffers of kBlockN x D

  // Causal blocks with the most keys start first, so the tail of the grid is short.
  const int qb = gridDim.x - 1 - blockIdx.x;
  const int m0 = qb * kBlockM;
  const int h = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  const auto [q, k, v, q_ld, kv_ld] = flash::head_rows<D>(p, b, h, m0);
  auto tiles = flash::cta_key_tiles<kKeys, kBlockN>(p, b, h, m0, kBlockM);
  // Query positions of the first and last real row this warp's mask row covers (the
  // CTA's rows unless paired), for the mask rule.
  const int rows_from = kKeys == Keys::paired ? (warp >> 1) * (kBlockM / 2) : 0;
  const int rows_to = kKeys == Keys::paired ? rows_from + kBlockM / 2 : kBlockM;
  const int q_first = p.q_offset + m0 + rows_from, q_last = p.q_offset + min(m0 + rows_to, p.tq) - 1;

  // The tile being computed and the one being loaded; the one after is chosen a tile
  // early, so that a listed row's block index is already in registers.
  Tile cur = tiles.next(), nxt = tiles.next();
  load_tile<kBlockM, D, kThreads>(sQ, q, q_ld, p.tq - m0, p.q);
  if (cur.rows) {
    load_tile<kBlockN, D, kThreads>(sK, k + cur.start * kv_ld, kv_ld, p.tk - cur.start, k);
    load_tile<kBlockN, D, kThreads>(sV, v + cur.start * kv_ld, kv_ld, p.tk - cur.start, v);
  }
  cp_async_commit();

  float acc[kMTiles][D / 8][4];
  float row_max[kMTiles][2], row_sum[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[mt][dt][c] = 0.f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_max[mt][r] = -INFINITY;
      row_sum[mt][r] = 0.f;
    }
  }

  for (int j = 0; cur.rows; ++j) {
    if (nxt.rows) {
      const int n = nxt.start;
      load_tile<kBlockN, D, kThreads>(sK + ((j + 1) & 1) * kBlockN * D, k + n * kv_ld, kv_ld, p.tk - n, k);
      load_tile<kBlockN, D, kThreads>(sV + ((j + 1) & 1) * kBlockN * D, v + n * kv_ld, kv_ld, p.tk - n, v);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    const Tile after = tiles.next();
    __syncthreads();
    // A paired CTA's warp skips the tiles its mask row does not list (warp-uniform).
    if (kKeys != Keys::paired || (cur.rows >> (warp >> 1)) & 1) {
      const __nv_bfloat16* k_s = sK + (j & 1) * kBlockN * D;
      const __nv_bfloat16* v_s = sV + (j & 1) * kBlockN * D;

      // S = Q K^T for this warp's rows and the tile's kBlockN keys.
      float s[kMTiles][kBlockN / 8][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt)
#pragma unroll
          for (int c = 0; c < 4; ++c) s[mt][nt][c] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t qa[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
          ldmatrix_x4(qa[mt], sQ + swz<D>(warp * kRowsPerWarp + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
        for (int np = 0; np < kBlockN / 16; ++np) {
          uint32_t kb[4];
          ldmatrix_x4(kb, k_s + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            mma_bf16_16816(s[mt][2 * np], qa[mt], kb[0], kb[1]);
            mma_bf16_16816(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
          }
        }
      }

      const int n0 = cur.start;
      bool edge = n0 + kBlockN > p.tk;
      if constexpr (kKeys == Keys::causal) edge |= n0 + kBlockN - 1 > m0 + p.causal_offset;
      if constexpr (kListed) edge |= !flash::rule_covers(p.rule, q_first, q_last, n0, n0 + kBlockN - 1);
      if (edge) flash::mask_edge_tile<kKeys, kMTiles, kBlockN>(s, p, m0 + warp * kRowsPerWarp, n0);

      // Online softmax: rescale what was accumulated by exp2(old max - new max).
      float corr[kMTiles][2];
      const bool max_moved = flash::online_softmax<kMTiles, kBlockN>(s, row_max, row_sum, corr, p.scale_log2);
      // A tile that moves none of the warp's reference maxima skips the rescale (D/4
      // multiplies per row pair), exactly (corr is 1).
      if (__any_sync(0xffffffffu, max_moved)) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
          for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[mt][dt][c] *= corr[mt][c >> 1];
      }

      // O += P V, P straight from the score registers.
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t pa[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          pa[mt][0] = pack_bf16x2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          pa[mt][1] = pack_bf16x2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          pa[mt][2] = pack_bf16x2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          pa[mt][3] = pack_bf16x2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, v_s + swz<D>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4)));
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            mma_bf16_16816(acc[mt][2 * dp], pa[mt], vb[0], vb[1]);
            mma_bf16_16816(acc[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
          }
        }
      }
    }
    // The next iteration's copy overwrites this tile's buffer.
    __syncthreads();
    cur = nxt;
    nxt = after;
  }
  cp_async_wait<0>();

  flash::store_output<kMTiles, D>(acc, row_sum, p.o + static_cast<int64_t>(b) * p.tq * q_ld + h * D, q_ld,
                                  m0 + warp * kRowsPerWarp, p.tq);
}

// CTAs of 4 warps, or 2 (32 rows each) for a mask's 64-query rows run one per CTA.
template <int D, int kBlockM, Keys kKeys, int kWarps = 4>
void launch(Params p, int batch, int k_block = kMaskKeyBlock) {
  constexpr int kSmem = (kBlockM + 4 * kKeyRows<D, kWarps>) * D * static_cast<int>(sizeof(__nv_bfloat16));
  static const bool configured = [] {
    SUBQ_CUDA_CHECK(cudaFuncSetAttribute(flash_forward_kernel<D, kBlockM, kKeys, kWarps>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    return true;
  }();
  (void)configured;
  p.sub_tiles = k_block / kKeyRows<D, kWarps>;
  const dim3 grid((p.tq + kBlockM - 1) / kBlockM, p.heads, batch);
  flash_forward_kernel<D, kBlockM, kKeys, kWarps><<<grid, kWarps * 32, kSmem, stream()>>>(p);
  SUBQ_CUDA_CHECK_LAUNCH("flash_forward_kernel");
}

void check_attention_tensor(const Tensor& t, const char* what) {
  check_device(t, Device::cuda, what);
  check_dtype(t, DType::bf16, what);
  check_contiguous(t, what);
  if (t.ndim() != 4) throw Error(std::string(what) + ": expected 4 dimensions [B, T, H, D], found " + t.str());
}

// Checks q, k, v, o and fills the Params fields shared by every mode.
Params check_and_describe(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, float scale) {
  check_attention_tensor(q, "flash_attention q");
  check_attention_tensor(k, "flash_attention k");
  check_attention_tensor(v, "flash_attention v");
  check_attention_tensor(o, "flash_attention o");
  const int64_t B = q.dim(0), Tq = q.dim(1), H = q.dim(2), D = q.dim(3);
  const int64_t Tk = k.dim(1), Hkv = k.dim(2);
  if (D != 64 && D != 128 && D != 256)
    throw Error("flash_attention q: head dim must be 64, 128 or 256, found " + q.str());
  check_shape(k, Shape{B, Tk, Hkv, D}, "flash_attention k");
  check_shape(v, Shape{B, Tk, Hkv, D}, "flash_attention v");
  check_shape(o, q.shape(), "flash_attention o");
  if (Hkv == 0 || H % Hkv != 0)
    throw Error("flash_attention: query heads (" + std::to_string(H) + ") must be a multiple of kv heads (" +
                std::to_string(Hkv) + ")");
  if (Tk == 0) throw Error("flash_attention k: needs at least one key, found " + k.str());
  if (Tq > (int64_t{1} << 30) || Tk > (int64_t{1} << 30) || H > 65535 || B > 65535)
    throw Error("flash_attention: sizes exceed the kernel's grid limits: q " + q.str() + ", k " + k.str());
  if (!(scale > 0.f) || !std::isfinite(scale))
    throw Error("flash_attention: scale must be positive and finite, found " + std::to_string(scale));
  Params p{};
  p.q = reinterpret_cast<const __nv_bfloat16*>(q.device_data<bf16>());
  p.k = reinterpret_cast<const __nv_bfloat16*>(k.device_data<bf16>());
  p.v = reinterpret_cast<const __nv_bfloat16*>(v.device_data<bf16>());
  p.o = reinterpret_cast<__nv_bfloat16*>(o.mutable_device_data<bf16>());
  p.tq = static_cast<int>(Tq);
  p.tk = static_cast<int>(Tk);
  p.heads = static_cast<int>(H);
  p.kv_heads = static_cast<int>(Hkv);
  p.group = static_cast<int>(H / Hkv);
  p.causal_offset = static_cast<int>(Tk - Tq);
  p.scale_log2 = scale * 1.4426950408889634f;
  return p;
}

DeviceRule device_rule(const attn::ElementRule& r) {
  const auto bound = [](int64_t x) { return x < 0 ? -1 : static_cast<int>(std::min<int64_t>(x, int64_t{1} << 30)); };
  DeviceRule d{};
  d.causal = r.causal;
  d.window_left = bound(r.window_left);
  d.window_right = bound(r.window_right);
  d.sinks = static_cast<int>(std::clamp<int64_t>(r.sinks, 0, int64_t{1} << 30));
  d.neighborhood = r.neighborhood;
  d.ndim = r.nbhd.ndim;
  for (int i = 0; i < 3; ++i) {
    d.grid[i] = static_cast<int>(r.nbhd.grid[static_cast<size_t>(i)]);
    d.kernel[i] = static_cast<int>(r.nbhd.kernel[static_cast<size_t>(i)]);
    d.dilation[i] = static_cast<int>(r.nbhd.dilation[static_cast<size_t>(i)]);
    d.stride[i] = static_cast<int>(r.nbhd.stride[static_cast<size_t>(i)]);
    d.dim_causal[i] = r.nbhd.causal[static_cast<size_t>(i)];
  }
  return d;
}

}  // namespace

void flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, bool causal,
                     float scale) {
  const Params p = check_and_describe(q, k, v, o, scale);
  const int64_t D = q.dim(3);
  if (q.dim(0) == 0 || p.tq == 0 || p.heads == 0) return;
  const int batch = static_cast<int>(q.dim(0));
  if (flash::sm90_available())
    return flash::sm90_forward(p, batch, static_cast<int>(D), causal ? Keys::causal : Keys::all, 128, 0);
  if (D == 64) causal ? launch<64, 128, Keys::causal>(p, batch) : launch<64, 128, Keys::all>(p, batch);
  else if (D == 128) causal ? launch<128, 128, Keys::causal>(p, batch) : launch<128, 128, Keys::all>(p, batch);
  else causal ? launch<256, 64, Keys::causal>(p, batch) : launch<256, 64, Keys::all>(p, batch);
}

namespace {

// What the kernel's indexing supports; upload() and every launch check it.
void check_device_geometry(const attn::BlockMask& mask, size_t listed) {
  if (mask.q_block != 64 && mask.q_block != 128)
    throw Error("cuda block mask: q_block must be 64 or 128 on the GPU, found " + std::to_string(mask.q_block));
  if (mask.k_block <= 0 || mask.k_block % kMaskKeyBlock != 0 || mask.k_block > 1024)
    throw Error("cuda block mask: k_block must be a multiple of 64 (at most 1024) on the GPU, found " +
                std::to_string(mask.k_block));
  if (mask.q_len > (int64_t{1} << 30) || mask.kv_len > (int64_t{1} << 30) || mask.q_offset < 0 ||
      mask.q_offset > (int64_t{1} << 30) || listed >= (size_t{1} << 31))
    throw Error("cuda block mask: sizes exceed the GPU kernel's 32-bit positions (q_len " +
                std::to_string(mask.q_len) + ", kv_len " + std::to_string(mask.kv_len) + ", q_offset " +
                std::to_string(mask.q_offset) + ", " + std::to_string(listed) + " blocks)");
  if (mask.rule.neighborhood) mask.rule.nbhd.validate();
}

}  // namespace

namespace {

// Share of a pair's summed lengths above which its union costs more as one paired CTA
// than as two 64-query ones.
constexpr double kPairedUnionShare = 0.6;

// Whether pairs of consecutive rows are worth pairing, from their summed lengths and
// the blocks both rows of a pair list.
bool pairing_pays(double summed, double shared) { return summed > 0 && summed - shared <= kPairedUnionShare * summed; }

// Pair blockIdx.x * stride of the mask's (batch, head) groups of nqb rows (the rows 2i
// and 2i + 1 of one group): a warp adds both lengths to sums[0] and the blocks they
// share (binary search of each of the first row's blocks in the second) to sums[1].
__global__ void row_overlap_kernel(const int* row_start, const int* key_blocks, int nqb, int64_t stride,
                                   unsigned long long* sums) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * stride, per_group = nqb / 2;
  const int64_t r = pair / per_group * nqb + 2 * (pair % per_group);
  const int* a = key_blocks + row_start[r];
  const int* b = key_blocks + row_start[r + 1];
  const int na = row_start[r + 1] - row_start[r], nb = row_start[r + 2] - row_start[r + 1];
  unsigned long long shared = 0;
  for (int i = threadIdx.x; i < na; i += 32) {
    int lo = 0, hi = nb;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (b[mid] < a[i]) lo = mid + 1;
      else hi = mid;
    }
    shared += lo < nb && b[lo] == a[i];
  }
  for (int off = 16; off > 0; off /= 2) shared += __shfl_xor_sync(0xffffffffu, shared, off);
  if (threadIdx.x == 0) {
    atomicAdd(sums, static_cast<unsigned long long>(na + nb));
    atomicAdd(sums + 1, shared);
  }
}

}  // namespace

void choose_row_pairing(DeviceBlockMask& mask) {
  const attn::BlockMask& m = mask.host;
  const int64_t nqb = m.num_q_blocks(), pairs = m.batch * m.heads * (nqb / 2);
  mask.pair_rows = false;
  if (m.q_block != 64 || pairs == 0) return;
  const int64_t sampled = std::min<int64_t>(pairs, 2048), stride = pairs / sampled;
  const Tensor sums = empty(DType::i32, {4});  // two unsigned 64-bit counters
  zero(sums);
  row_overlap_kernel<<<static_cast<unsigned>(sampled), 32, 0, stream()>>>(
      mask.row_start.device_data<int32_t>(), mask.key_blocks.device_data<int32_t>(), static_cast<int>(nqb), stride,
      reinterpret_cast<unsigned long long*>(sums.mutable_device_data<int32_t>()));
  SUBQ_CUDA_CHECK_LAUNCH("row_overlap_kernel");
  unsigned long long host[2];
  std::memcpy(host, to_host(sums).data<int32_t>(), sizeof host);
  mask.pair_rows = pairing_pays(static_cast<double>(host[0]), static_cast<double>(host[1]));
}

DeviceBlockMask upload(const attn::BlockMask& mask) {
  mask.validate();
  check_device_geometry(mask, mask.key_blocks.size());
  DeviceBlockMask d;
  d.host = mask;
  Tensor starts = Tensor::empty(DType::i32, {static_cast<int64_t>(mask.row_start.size())});
  int32_t* s = starts.mutable_data<int32_t>();
  for (size_t i = 0; i < mask.row_start.size(); ++i) s[i] = static_cast<int32_t>(mask.row_start[i]);
  d.row_start = to_device(starts);
  // An empty mask still gets a one-element array, so the kernel's pointer is valid.
  Tensor blocks = Tensor::empty(DType::i32, {std::max<int64_t>(1, static_cast<int64_t>(mask.key_blocks.size()))});
  int32_t* kb = blocks.mutable_data<int32_t>();
  kb[0] = 0;
  std::copy(mask.key_blocks.begin(), mask.key_blocks.end(), kb);
  d.key_blocks = to_device(blocks);
  if (mask.q_block == 64) {
    double summed = 0, shared = 0;
    const int64_t nqb = mask.num_q_blocks();
    for (int64_t g = 0; g < mask.batch * mask.heads; ++g)
      for (int64_t i = 0; i + 1 < nqb; i += 2) {
        const auto a = mask.row(g / mask.heads, g % mask.heads, i), b = mask.row(g / mask.heads, g % mask.heads, i + 1);
        summed += static_cast<double>(a.size() + b.size());
        for (int32_t kb : a) shared += std::binary_search(b.begin(), b.end(), kb);
      }
    d.pair_rows = pairing_pays(summed, shared);
  }
  return d;
}

attn::BlockMask download(const DeviceBlockMask& mask) {
  attn::BlockMask m = mask.host;
  const auto listed = static_cast<size_t>(m.row_start.empty() ? 0 : m.row_start.back());
  if (m.key_blocks.size() != listed) {
    const Tensor blocks = to_host(mask.key_blocks);
    m.key_blocks.assign(blocks.data<int32_t>(), blocks.data<int32_t>() + listed);
  }
  return m;
}

void flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                     const DeviceBlockMask& mask, float scale) {
  Params p = check_and_describe(q, k, v, o, scale);
  const attn::BlockMask& m = mask.host;
  const int64_t B = q.dim(0), H = q.dim(2), D = q.dim(3);
  if (m.q_len != p.tq || m.kv_len != p.tk)
    throw Error("flash_attention mask: built for q_len " + std::to_string(m.q_len) + ", kv_len " +
                std::to_string(m.kv_len) + ", found q " + q.str() + ", k " + k.str());
  if ((m.batch != 1 && m.batch != B) || (m.heads != 1 && m.heads != H))
    throw Error("flash_attention mask: batch " + std::to_string(m.batch) + " and heads " + std::to_string(m.heads) +
                " must be 1 or match q " + q.str());
  if (D == 256 && m.q_block != 64)
    throw Error("flash_attention mask: head dim 256 needs q_block 64, found " + std::to_string(m.q_block));
  if (mask.row_start.numel() != static_cast<int64_t>(m.row_start.size()) || mask.row_start.device() != Device::cuda ||
      m.row_start.empty() || mask.key_blocks.device() != Device::cuda ||
      mask.key_blocks.numel() < std::max<int64_t>(1, m.row_start.back()))
    throw Error("flash_attention mask: not in GPU memory (use cuda::upload)");
  check_device_geometry(m, static_cast<size_t>(m.row_start.back()));
  if (B == 0 || p.tq == 0 || H == 0) return;
  p.row_start = mask.row_start.device_data<int32_t>();
  p.key_blocks = mask.key_blocks.device_data<int32_t>();
  p.mask_batch = static_cast<int>(m.batch);
  p.mask_heads = static_cast<int>(m.heads);
  p.num_q_blocks = static_cast<int>(m.num_q_blocks());
  p.q_block = static_cast<int>(m.q_block);
  p.q_offset = static_cast<int>(m.q_offset);
  p.rule = device_rule(m.rule);
  const int batch = static_cast<int>(B), kb = static_cast<int>(m.k_block);
  if (D <= 128 && flash::sm90_available()) {
    flash::sm90_forward(p, batch, static_cast<int>(D), Keys::listed, static_cast<int>(m.q_block), kb);
  } else if (m.q_block == 128) {
    if (D == 64) launch<64, 128, Keys::listed>(p, batch, kb);
    else launch<128, 128, Keys::listed>(p, batch, kb);
  } else if (mask.pair_rows && D <= 128) {
    if (D == 64) launch<64, 128, Keys::paired>(p, batch, kb);
    else launch<128, 128, Keys::paired>(p, batch, kb);
  } else {
    if (D == 64) launch<64, 64, Keys::listed, 2>(p, batch, kb);
    else if (D == 128) launch<128, 64, Keys::listed, 2>(p, batch, kb);
    else launch<256, 64, Keys::listed>(p, batch, kb);
  }
}

}  // namespace subq::cuda
