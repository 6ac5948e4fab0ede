// Block-sparse flash attention and split-KV decode on the GPU against the float64
// masked reference (the same BlockMask applied element by element). Tolerance as in
// flash_attention_test.cpp: bf16 P before PV and a bf16 output give |err| <= 6e-3 +
// 1e-2 |o| with margin; a wrong block list, rule or head mapping is off by far more.
#include <cmath>
#include <limits>
#include <utility>

#include "src/ops/attention/flash_attention.h"
#include "src/ops/attention/selectors/static_selectors.h"
#include "tests/cuda/cuda_test.h"
#include "tests/reference/attention.h"

namespace subq::test {
namespace {

using attn::BlockMask;
using attn::MaskGeometry;

struct Problem {
  int64_t B, T, H, Hkv, D;
};

struct Inputs {
  Tensor q, k, v;  // host bf16
};

Inputs make_inputs(std::mt19937_64& rng, const Problem& p, int64_t Tq, int64_t Tk) {
  const Shape qs{p.B, Tq, p.H, p.D}, ks{p.B, Tk, p.Hkv, p.D};
  return {host_tensor(normal(rng, static_cast<size_t>(qs.numel())), qs, DType::bf16),
          host_tensor(normal(rng, static_cast<size_t>(ks.numel())), ks, DType::bf16),
          host_tensor(uniform(rng, static_cast<size_t>(ks.numel())), ks, DType::bf16)};
}

void expect_mask_run_matches(std::mt19937_64& rng, const Problem& p, const BlockMask& m, const std::string& what) {
  SCOPED_TRACE(what + ": B=" + std::to_string(p.B) + " Tq=" + std::to_string(m.q_len) + " Tk=" +
               std::to_string(m.kv_len) + " H=" + std::to_string(p.H) + " Hkv=" + std::to_string(p.Hkv) +
               " D=" + std::to_string(p.D) + " blocks " + std::to_string(m.q_block) + "x" + std::to_string(m.k_block));
  const Inputs in = make_inputs(rng, p, m.q_len, m.kv_len);
  const double scale = 1.0 / std::sqrt(static_cast<double>(p.D));
  const auto allowed = [&](int64_t b, int64_t h, int64_t i, int64_t j) { return ref::block_mask_allows(m, b, h, i, j); };
  const auto want = ref::attention(to_double(in.q), to_double(in.k), to_double(in.v), p.B, m.q_len, m.kv_len, p.H,
                                   p.Hkv, p.D, scale, 0.0, allowed);
  // 64-query rows run both one per CTA and paired, whichever upload() would choose.
  for (bool paired : {false, true}) {
    if (paired && (m.q_block != 64 || p.D > 128)) continue;
    cuda::DeviceBlockMask d = cuda::upload(m);
    d.pair_rows = paired;
    const Tensor o = poisoned_device_tensor(DType::bf16, {p.B, m.q_len, p.H, p.D});
    cuda::flash_attention(cuda::to_device(in.q), cuda::to_device(in.k), cuda::to_device(in.v), o, d,
                          static_cast<float>(scale));
    expect_close(device_values(o), want, 1e-2, 6e-3, what + (paired ? " (rows paired)" : ""));
  }
}

TEST(CudaSparseAttention, DenseMasksEqualTheDenseDefinition) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  for (int64_t qb : {64, 128})
    for (int64_t kb : {64, 128})
      for (bool causal : {true, false}) {
        expect_mask_run_matches(rng, {2, 200, 4, 2, 64}, attn::dense_mask(200, 200, causal, 0, qb, kb), "dense");
        expect_mask_run_matches(rng, {1, 129, 2, 1, 128}, attn::dense_mask(129, 129, causal, 0, qb, kb), "dense");
      }
  expect_mask_run_matches(rng, {1, 100, 2, 2, 256}, attn::dense_mask(100, 100, true, 0, 64, 64), "dense d256");
}

TEST(CudaSparseAttention, ChunkAgainstACacheWithQueryOffset) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  // 77 new queries at positions 300..376 against 377 cached keys.
  expect_mask_run_matches(rng, {2, 77, 4, 1, 128}, attn::dense_mask(77, 377, true, 300, 64, 64), "offset");
  expect_mask_run_matches(rng, {1, 77, 2, 2, 64}, attn::dense_mask(77, 377, true, 300, 128, 128), "offset");
}

TEST(CudaSparseAttention, SlidingWindowWithSinks) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  for (int64_t blk : {64, 128}) {
    const MaskGeometry g{1000, 1000, 0, blk, blk, 1, nullptr};
    expect_mask_run_matches(rng, {1, 1000, 4, 2, 128}, attn::sliding_window_mask(g, 150, 0, true), "window");
    expect_mask_run_matches(rng, {1, 1000, 2, 1, 64}, attn::sliding_window_mask(g, 150, 5, true), "window+sinks");
    expect_mask_run_matches(rng, {2, 1000, 2, 2, 64}, attn::sliding_window_mask(g, 200, 0, false), "two-sided");
  }
}

// More mask rows than the GPU has SMs (two CTAs per SM for 64-query rows on Hopper), for
// each block shape the kernels tile differently.
TEST(CudaSparseAttention, PersistentCtasTakeSeveralRows) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  for (auto [qb, kb] : {std::pair<int64_t, int64_t>{64, 64}, {128, 128}, {128, 64}, {64, 128}})
    for (int64_t D : {64, 128}) {
      const MaskGeometry g{200, 200, 0, qb, kb, 1, nullptr};
      expect_mask_run_matches(rng, {4, 200, 24, 8, D}, attn::sliding_window_mask(g, 70, 3, true), "window+sinks");
    }
}

TEST(CudaSparseAttention, PerHeadBigBirdAndPowerAttention) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t T = 700, H = 4;
  for (bool causal : {true, false}) {
    const MaskGeometry g{T, T, 0, 64, 64, H, nullptr};
    expect_mask_run_matches(rng, {2, T, H, 2, 128}, attn::bigbird_mask(g, 1, 1, 2, 17, causal), "bigbird");
    expect_mask_run_matches(rng, {1, T, H, 4, 64}, attn::power_attention_mask(g, 1, 1, causal), "power");
  }
}

TEST(CudaSparseAttention, NeighborhoodWindowsOnGrids) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  attn::Neighborhood one;
  one.ndim = 1;
  one.grid = {300, 1, 1};
  one.kernel = {33, 1, 1};
  one.dilation = {2, 1, 1};
  attn::Neighborhood two;
  two.ndim = 2;
  two.grid = {17, 23, 1};
  two.kernel = {5, 7, 1};
  two.dilation = {1, 2, 1};
  two.stride = {2, 1, 1};
  attn::Neighborhood three;
  three.ndim = 3;
  three.grid = {5, 6, 9};
  three.kernel = {3, 3, 5};
  three.causal = {true, false, false};
  // Head dim 128 with 128-blocks too: on Hopper those masks take the one-tile-at-a-time
  // kernel, the pipelined one being built without the neighborhood rule.
  for (const attn::Neighborhood& n : {one, two, three}) {
    const int64_t T = n.tokens();
    expect_mask_run_matches(rng, {1, T, 2, 1, 64}, attn::neighborhood_mask(MaskGeometry{T, T, 0, 64, 64, 1, nullptr}, n),
                            std::to_string(n.ndim) + "-D neighborhood");
    expect_mask_run_matches(rng, {1, T, 2, 1, 128},
                            attn::neighborhood_mask(MaskGeometry{T, T, 0, 128, 128, 1, nullptr}, n),
                            std::to_string(n.ndim) + "-D neighborhood, 128-blocks");
  }
}

TEST(CudaSparseAttention, EmptyRowsGiveZeros) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  // Only query block 1 lists a key block; every other row must come out 0, not NaN.
  attn::BlockMaskBuilder builder(1, 1, 300, 300, 128, 64, 0, attn::ElementRule{});
  for (int qb = 0; qb < 3; ++qb) {
    std::vector<int32_t> row;
    if (qb == 1) row = {0, 3};
    builder.add_row(row);
  }
  expect_mask_run_matches(rng, {1, 300, 2, 1, 64}, builder.finish(), "empty rows");
}

// A mask of 64-query blocks runs two rows per CTA over the union of their key blocks:
// rows whose lists are disjoint, nested or empty on either side of a pair, blocks of one
// and two key tiles, and a last pair without its second row.
TEST(CudaSparseAttention, PairedRowsVisitOnlyTheirOwnBlocks) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const std::vector<std::vector<int32_t>> rows = {{0, 5}, {}, {}, {3}, {7}, {1, 2, 3, 4, 5, 6, 7}, {2}, {}, {4, 6}};
  for (int64_t k_block : {64, 128}) {
    const int64_t T = 64 * static_cast<int64_t>(rows.size()) - 20, nkb = (T + k_block - 1) / k_block;
    attn::BlockMaskBuilder builder(1, 1, T, T, 64, k_block, 0, attn::ElementRule{});
    for (const auto& listed : rows) {
      std::vector<int32_t> row;
      for (int32_t kb : listed)
        if (kb < nkb && (row.empty() || row.back() < kb)) row.push_back(kb);
      builder.add_row(row);
    }
    expect_mask_run_matches(rng, {2, T, 2, 1, 128}, builder.finish(), "paired rows, k_block " + std::to_string(k_block));
  }
}

// Rows are paired when consecutive rows share most blocks (a window), not when they
// share few (disjoint top-k rows); the GPU's sampled decision agrees with upload()'s.
TEST(CudaSparseAttention, PairsRowsThatShareTheirBlocks) {
  SUBQ_REQUIRE_GPU();
  const MaskGeometry g{4000, 4000, 0, 64, 64, 2, nullptr};
  attn::BlockMaskBuilder disjoint(1, 2, 4000, 4000, 64, 64, 0, attn::ElementRule{});
  const int64_t nqb = (4000 + 63) / 64;
  for (int64_t r = 0; r < 2 * nqb; ++r) {
    std::vector<int32_t> row = {static_cast<int32_t>((r % nqb) % 2), static_cast<int32_t>(2 + (r % nqb) % 2)};
    disjoint.add_row(row);
  }
  const std::pair<BlockMask, bool> cases[] = {{attn::sliding_window_mask(g, 1000, 0, true), true},
                                              {attn::dense_mask(4000, 4000, true, 0, 64, 64), true},
                                              {disjoint.finish(), false},
                                              {attn::dense_mask(4000, 4000, true, 0, 128, 128), false}};
  for (const auto& [mask, paired] : cases) {
    cuda::DeviceBlockMask d = cuda::upload(mask);
    EXPECT_EQ(d.pair_rows, paired) << "q_block " << mask.q_block;
    d.pair_rows = !paired;
    cuda::choose_row_pairing(d);
    EXPECT_EQ(d.pair_rows, paired) << "q_block " << mask.q_block << " on the GPU";
  }
}

TEST(CudaSparseAttention, RejectsMasksTheKernelCannotRun) {
  SUBQ_REQUIRE_GPU();
  EXPECT_THROW(cuda::upload(attn::dense_mask(100, 100, true, 0, 32, 64)), Error);
  EXPECT_THROW(cuda::upload(attn::dense_mask(100, 100, true, 0, 64, 96)), Error);
  const Tensor q = cuda::empty(DType::bf16, {1, 100, 2, 64});
  const cuda::DeviceBlockMask wrong = cuda::upload(attn::dense_mask(90, 90, true));
  EXPECT_THROW(cuda::flash_attention(q, q, q, q, wrong, 0.125f), Error);
  const Tensor q256 = cuda::empty(DType::bf16, {1, 100, 2, 256});
  EXPECT_THROW(cuda::flash_attention(q256, q256, q256, q256, cuda::upload(attn::dense_mask(100, 100, true, 0, 128, 64)),
                                     0.0625f),
               Error);
  // A launch checks the geometry itself, whoever made the device mask.
  cuda::DeviceBlockMask odd = cuda::upload(attn::dense_mask(100, 100, true));
  odd.host.q_block = 32;
  EXPECT_THROW(cuda::flash_attention(q, q, q, q, odd, 0.125f), Error);
  cuda::DeviceBlockMask hollow = cuda::upload(attn::dense_mask(100, 100, true));
  hollow.key_blocks = Tensor{};
  EXPECT_THROW(cuda::flash_attention(q, q, q, q, hollow, 0.125f), Error);
}

TEST(CudaSparseAttention, DownloadReturnsTheUploadedMask) {
  SUBQ_REQUIRE_GPU();
  const attn::BlockMask m = attn::bigbird_mask(attn::MaskGeometry{1000, 1000, 0, 64, 64, 3, nullptr}, 1, 1, 2, 7, true);
  cuda::DeviceBlockMask d = cuda::upload(m);
  d.host.key_blocks.clear();  // as a GPU selector leaves it
  const attn::BlockMask back = cuda::download(d);
  EXPECT_EQ(back.row_start, m.row_start);
  EXPECT_EQ(back.key_blocks, m.key_blocks);
}

// Decode: q [B, 1, H, D] against the first kv_len slots of a larger cache whose unused
// slots hold NaN, so a read past kv_len shows up in the output.
// splits < 0: the length is passed in GPU memory (the keys split for the capacity, which
// is then over twice the length, so that whole splits are empty).
void run_decode(std::mt19937_64& rng, int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t kv_len, int64_t splits) {
  SCOPED_TRACE("decode B=" + std::to_string(B) + " H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) + " D=" +
               std::to_string(D) + " kv_len=" + std::to_string(kv_len) + " splits=" + std::to_string(splits));
  const int64_t capacity = splits < 0 ? 2 * kv_len + 37 : kv_len + 37;
  const Inputs in = make_inputs(rng, {B, 1, H, Hkv, D}, 1, kv_len);
  Tensor kc = Tensor::empty(DType::bf16, {B, capacity, Hkv, D}), vc = Tensor::empty(DType::bf16, {B, capacity, Hkv, D});
  const bf16 nan = to_bf16(std::numeric_limits<float>::quiet_NaN());
  std::fill_n(kc.mutable_data<bf16>(), kc.numel(), nan);
  std::fill_n(vc.mutable_data<bf16>(), vc.numel(), nan);
  const int64_t row = Hkv * D;
  for (int64_t b = 0; b < B; ++b) {
    std::copy_n(in.k.data<bf16>() + b * kv_len * row, kv_len * row, kc.mutable_data<bf16>() + b * capacity * row);
    std::copy_n(in.v.data<bf16>() + b * kv_len * row, kv_len * row, vc.mutable_data<bf16>() + b * capacity * row);
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const Tensor o = poisoned_device_tensor(DType::bf16, {B, 1, H, D});
  if (splits < 0) {
    Tensor len = Tensor::empty(DType::i32, {1});
    len.mutable_data<int32_t>()[0] = static_cast<int32_t>(kv_len);
    cuda::decode_attention(cuda::to_device(in.q), cuda::to_device(kc), cuda::to_device(vc), o, cuda::to_device(len),
                           static_cast<float>(scale));
  } else {
    cuda::decode_attention(cuda::to_device(in.q), cuda::to_device(kc), cuda::to_device(vc), o, kv_len,
                           static_cast<float>(scale), splits);
  }
  const auto all = [](int64_t, int64_t, int64_t, int64_t) { return true; };
  const auto want =
      ref::attention(to_double(in.q), to_double(in.k), to_double(in.v), B, 1, kv_len, H, Hkv, D, scale, 0.0, all);
  expect_close(device_values(o), want, 1e-2, 6e-3, "decode_attention");
}

TEST(CudaDecodeAttention, MatchesReferenceOverCacheLengthsAndSplits) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  for (int64_t D : {64, 128, 256})
    for (int64_t kv_len : {1, 7, 300, 5000}) run_decode(rng, 2, 4, 2, D, kv_len, 0);
  for (int64_t splits : {1, 3, 64, 100000}) run_decode(rng, 1, 2, 1, 128, 1000, splits);
}

// The length read from GPU memory (what a captured decode graph replays with).
TEST(CudaDecodeAttention, LengthInGpuMemory) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  for (int64_t D : {64, 128})
    for (int64_t kv_len : {1, 65, 3000}) run_decode(rng, 2, 8, 2, D, kv_len, -1);
}

// kv_append writes tokens [pos, pos + T) of a bf16 cache from a head range of a fused
// f32 buffer, zero-padding each head, and leaves every other slot as it was.
TEST(CudaDecodeAttention, KvAppendWritesOnlyItsSlots) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t T = 5, Htot = 7, H = 3, Dh = 40, Dp = 64, cap = 19, pos = 11;
  const auto x = uniform(rng, static_cast<size_t>(T * Htot * Dh));
  const Tensor fused = cuda::to_device(tensor_from(x, {T, Htot, Dh}));
  const Tensor cache = poisoned_device_tensor(DType::bf16, {cap, H, Dp});
  Tensor p = Tensor::empty(DType::i32, {1});
  p.mutable_data<int32_t>()[0] = static_cast<int32_t>(pos);
  cuda::kv_append(fused.slice(1, 2, 2 + H), cache, cuda::to_device(p));
  const auto got = device_values(cache);
  for (int64_t s = 0; s < cap; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < Dp; ++j) {
        const double g = got[static_cast<size_t>((s * H + h) * Dp + j)];
        if (s < pos || s >= pos + T) {
          EXPECT_TRUE(std::isnan(g)) << "slot " << s << " was written";
        } else {
          const double want =
              j < Dh ? to_float(to_bf16(x[static_cast<size_t>(((s - pos) * Htot + 2 + h) * Dh + j)])) : 0.0;
          EXPECT_EQ(g, want) << "slot " << s << " head " << h << " channel " << j;
        }
      }
  Tensor past = Tensor::empty(DType::i32, {1});
  past.mutable_data<int32_t>()[0] = static_cast<int32_t>(cap - 2);  // only 2 of the 5 fit
  const Tensor cache2 = poisoned_device_tensor(DType::bf16, {cap, H, Dp});
  cuda::kv_append(fused.slice(1, 0, H), cache2, cuda::to_device(past));
  const auto got2 = device_values(cache2);
  EXPECT_FALSE(std::isnan(got2[static_cast<size_t>((cap - 1) * H * Dp)]));
  EXPECT_TRUE(std::isnan(got2[static_cast<size_t>((cap - 3) * H * Dp)]));
  EXPECT_THROW(cuda::kv_append(fused, cuda::empty(DType::bf16, {cap, H, Dp}), cuda::to_device(p)), Error);
}

// On a ring of 3 sinks and a window of 8, positions below 3 keep their slot and later
// ones wrap around slots [3, 11); untouched slots stay as they were.
TEST(CudaDecodeAttention, KvAppendOnRingWrapsPastTheSinks) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t T = 5, H = 2, Dh = 64, S = 3, W = 8, cap = S + W;
  const auto x = uniform(rng, static_cast<size_t>(T * H * Dh));
  const Tensor src = cuda::to_device(tensor_from(x, {T, H, Dh}));
  for (int64_t pos : {1, 13, 15, 40}) {
    const Tensor cache = poisoned_device_tensor(DType::bf16, {cap, H, Dh});
    Tensor p = Tensor::empty(DType::i32, {1});
    p.mutable_data<int32_t>()[0] = static_cast<int32_t>(pos);
    cuda::kv_append(src, cache, cuda::to_device(p), {S, W});
    std::vector<int64_t> token_at(cap, -1);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t q = pos + t;
      token_at[static_cast<size_t>(q < S ? q : S + (q - S) % W)] = t;
    }
    const auto got = device_values(cache);
    for (int64_t slot = 0; slot < cap; ++slot)
      for (int64_t j = 0; j < H * Dh; ++j) {
        const double g = got[static_cast<size_t>(slot * H * Dh + j)];
        const int64_t t = token_at[static_cast<size_t>(slot)];
        if (t < 0) EXPECT_TRUE(std::isnan(g)) << "position " << pos << ": slot " << slot << " was written";
        else EXPECT_EQ(g, to_float(to_bf16(x[static_cast<size_t>(t * H * Dh + j)]))) << "slot " << slot;
      }
  }
  Tensor p = Tensor::empty(DType::i32, {1});
  p.mutable_data<int32_t>()[0] = 0;
  EXPECT_THROW(cuda::kv_append(src, cuda::empty(DType::bf16, {cap, H, Dh}), cuda::to_device(p), {S, 4}), Error);
}

TEST(CudaDecodeAttention, EveryGroupSize) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  for (int64_t group : {1, 2, 3, 4, 5, 8, 12, 16}) run_decode(rng, 2, 2 * group, 2, 128, 777, 0);
}

TEST(CudaDecodeAttention, EqualsTheLastRowOfCausalPrefill) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t B = 2, T = 513, H = 8, Hkv = 2, D = 128;
  const Inputs in = make_inputs(rng, {B, T, H, Hkv, D}, T, T);
  const Tensor q = cuda::to_device(in.q), k = cuda::to_device(in.k), v = cuda::to_device(in.v);
  const Tensor full = poisoned_device_tensor(DType::bf16, {B, T, H, D});
  cuda::flash_attention(q, k, v, full, true, 0.088f);
  Tensor q_last = Tensor::empty(DType::bf16, {B, 1, H, D});
  for (int64_t b = 0; b < B; ++b)
    std::copy_n(in.q.data<bf16>() + ((b * T + T - 1) * H) * D, H * D, q_last.mutable_data<bf16>() + b * H * D);
  const Tensor o = poisoned_device_tensor(DType::bf16, {B, 1, H, D});
  cuda::decode_attention(cuda::to_device(q_last), k, v, o, T, 0.088f);
  const auto prefill = device_values(full);
  std::vector<double> last(static_cast<size_t>(B * H * D));
  for (int64_t b = 0; b < B; ++b)
    std::copy_n(prefill.begin() + ((b * T + T - 1) * H) * D, H * D, last.begin() + b * H * D);
  expect_close(device_values(o), last, 1e-2, 6e-3, "decode vs prefill");
}

TEST(CudaDecodeAttention, RejectsBadArguments) {
  SUBQ_REQUIRE_GPU();
  const Tensor q = cuda::empty(DType::bf16, {1, 1, 4, 64});
  const Tensor k = cuda::empty(DType::bf16, {1, 100, 2, 64});
  EXPECT_THROW(cuda::decode_attention(q, k, k, q, 0, 0.125f), Error);
  EXPECT_THROW(cuda::decode_attention(q, k, k, q, 101, 0.125f), Error);
  const Tensor q2 = cuda::empty(DType::bf16, {1, 2, 4, 64});
  EXPECT_THROW(cuda::decode_attention(q2, k, k, q2, 50, 0.125f), Error);
  const Tensor k3 = cuda::empty(DType::bf16, {1, 100, 3, 64});
  EXPECT_THROW(cuda::decode_attention(q, k3, k3, q, 50, 0.125f), Error);
  const Tensor q_wide = cuda::empty(DType::bf16, {1, 1, 34, 64});
  const Tensor k1 = cuda::empty(DType::bf16, {1, 100, 1, 64});
  EXPECT_THROW(cuda::decode_attention(q_wide, k1, k1, q_wide, 50, 0.125f), Error);
}

}  // namespace
}  // namespace subq::test
