// The GPU's dynamic selectors against the CPU's on the same queries and keys, and MoBA's
// mask against the float64 ranking it must realise. The GPU sums block means and scores
// in another order, so a block may swap with one whose score ties it within rounding (and,
// in HiP, the halves below it); any other difference (a wrong head mapping, mean, causal
// limit or order) changes most rows.
#include <algorithm>
#include <cmath>

#include "src/ops/attention/selectors/dynamic_selectors.h"
#include "src/ops/attention/selectors/dynamic_selectors_cuda.h"
#include "tests/cuda/cuda_test.h"

namespace subq::test {
namespace {

struct Case {
  int64_t q_len, kv_len, q_offset, block, Hq, Hkv, Dh, top_k;
};

// Means of every block of `block` rows of every head of x [rows, heads, Dh] (row stride
// `stride`), as [heads][blocks][Dh].
std::vector<std::vector<std::vector<double>>> block_means(const float* x, int64_t stride, int64_t rows, int64_t heads,
                                                          int64_t Dh, int64_t block) {
  const int64_t blocks = (rows + block - 1) / block;
  std::vector means(static_cast<size_t>(heads), std::vector(static_cast<size_t>(blocks),
                                                            std::vector<double>(static_cast<size_t>(Dh), 0.0)));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t b = 0; b < blocks; ++b) {
      auto& m = means[static_cast<size_t>(h)][static_cast<size_t>(b)];
      const int64_t r0 = b * block, r1 = std::min(rows, r0 + block);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t d = 0; d < Dh; ++d) m[static_cast<size_t>(d)] += x[r * stride + h * Dh + d];
      for (double& v : m) v /= static_cast<double>(r1 - r0);
    }
  return means;
}

std::string describe(const Case& c) {
  return "Tq=" + std::to_string(c.q_len) + " Tk=" + std::to_string(c.kv_len) + " offset=" + std::to_string(c.q_offset) +
         " block=" + std::to_string(c.block) + " H=" + std::to_string(c.Hq) + "/" + std::to_string(c.Hkv) +
         " Dh=" + std::to_string(c.Dh) + " top_k=" + std::to_string(c.top_k);
}

// Random q and k as head ranges of one fused projection, strided as in a model, on the
// host (for the CPU selector) and on the GPU.
struct QK {
  int64_t Dh, Hq, Hkv, width;
  Tensor qh, kh, qd, kd;

  QK(std::mt19937_64& rng, const Case& c) : Dh(c.Dh), Hq(c.Hq), Hkv(c.Hkv), width((c.Hq + c.Hkv + 1) * c.Dh) {
    qh = tensor_from(normal(rng, static_cast<size_t>(c.q_len * width)), {c.q_len, width});
    kh = tensor_from(normal(rng, static_cast<size_t>(c.kv_len * width)), {c.kv_len, width});
    qd = cuda::to_device(qh);
    kd = cuda::to_device(kh);
  }
  // Every token the same as the first, so that all logits of a row tie.
  void repeat_first_token() {
    for (Tensor* t : {&qh, &kh}) {
      float* p = t->mutable_data<float>();
      for (int64_t r = 1; r < t->dim(0); ++r) std::copy_n(p, width, p + r * width);
    }
    qd = cuda::to_device(qh);
    kd = cuda::to_device(kh);
  }
  // Query heads of even index times `factor`: sharper attention, farther from the
  // pooled scores' (FlexPrefill picks vertical-slash rows for them at a middle tau).
  void sharpen_even_heads(float factor) {
    float* p = qh.mutable_data<float>();
    for (int64_t r = 0; r < qh.dim(0); ++r)
      for (int64_t h = 0; h < Hq; h += 2)
        for (int64_t d = 0; d < Dh; ++d) p[r * width + h * Dh + d] *= factor;
    qd = cuda::to_device(qh);
  }
  // Every value rounded to bf16, as the GPU's XAttention scores them.
  void round_to_bf16() {
    for (Tensor* t : {&qh, &kh}) {
      float* p = t->mutable_data<float>();
      for (int64_t i = 0; i < t->numel(); ++i) p[i] = to_float(to_bf16(p[i]));
    }
    qd = cuda::to_device(qh);
    kd = cuda::to_device(kh);
  }
  Tensor q() const { return qd.view({qd.dim(0), width / Dh, Dh}).slice(1, 0, Hq); }
  Tensor k() const { return kd.view({kd.dim(0), width / Dh, Dh}).slice(1, Hq, Hq + Hkv); }
  attn::AttentionArgs args(const Case& c) const {
    attn::AttentionArgs a;
    a.q = qh.data<float>();
    a.k = kh.data<float>() + c.Hq * c.Dh;
    a.q_row_stride = a.k_row_stride = width;
    a.q_batch_stride = c.q_len * width;
    a.k_batch_stride = c.kv_len * width;
    a.q_len = c.q_len;
    a.kv_len = c.kv_len;
    a.q_heads = c.Hq;
    a.kv_heads = c.Hkv;
    a.head_dim = c.Dh;
    return a;
  }
};

attn::MaskGeometry geometry(const Case& c) { return {c.q_len, c.kv_len, c.q_offset, c.block, c.block, c.Hq, nullptr}; }

// The GPU mask's structure (a valid mask with the CPU's geometry, every row closed by
// its diagonal) and how many of its rows differ from the CPU's, which must be few.
void expect_like_the_cpu(const Case& c, const cuda::DeviceBlockMask& gpu, const attn::BlockMask& cpu) {
  const attn::BlockMask m = cuda::download(gpu);
  EXPECT_NO_THROW(m.validate());
  EXPECT_EQ(m.heads, c.Hq);
  EXPECT_EQ(m.row_start.size(), cpu.row_start.size());
  EXPECT_EQ(m.q_offset, cpu.q_offset);
  EXPECT_TRUE(m.rule.causal);
  const int64_t nqb = m.num_q_blocks(), first = c.q_offset / c.block;
  int64_t differing_rows = 0;
  for (int64_t h = 0; h < c.Hq; ++h)
    for (int64_t qb = 0; qb < nqb; ++qb) {
      const auto row = m.row(0, h, qb), want = cpu.row(0, h, qb);
      ASSERT_FALSE(row.empty());
      EXPECT_EQ(row.back(), first + qb) << "the diagonal block closes every row";
      differing_rows += !std::equal(row.begin(), row.end(), want.begin(), want.end());
    }
  EXPECT_LE(differing_rows, std::max<int64_t>(1, c.Hq * nqb / 100)) << "rounding ties are rare on random inputs";
}

void expect_moba_mask(std::mt19937_64& rng, const Case& c) {
  SCOPED_TRACE("moba " + describe(c));
  const QK in(rng, c);
  const attn::MaskGeometry g = geometry(c);
  const cuda::DeviceBlockMask gpu = cuda::moba_mask(g, in.q(), in.k(), c.top_k);
  const attn::BlockMask cpu = attn::moba_mask(g, in.args(c), c.top_k);
  EXPECT_TRUE(gpu.host.key_blocks.empty()) << "the blocks stay in GPU memory";
  EXPECT_EQ(gpu.host.row_start, cpu.row_start);
  expect_like_the_cpu(c, gpu, cpu);

  // Every row keeps blocks no float64 score beats by more than rounding.
  const attn::BlockMask m = cuda::download(gpu);
  const int64_t nqb = m.num_q_blocks(), nkb = m.num_k_blocks(), first = c.q_offset / c.block;
  const auto q_means = block_means(in.qh.data<float>(), in.width, c.q_len, c.Hq, c.Dh, c.block);
  const auto k_means = block_means(in.kh.data<float>() + c.Hq * c.Dh, in.width, c.kv_len, c.Hkv, c.Dh, c.block);
  for (int64_t h = 0; h < c.Hq; ++h)
    for (int64_t qb = 0; qb < nqb; ++qb) {
      const auto row = m.row(0, h, qb);
      const int64_t past = std::min(first + qb, nkb), keep = std::min(c.top_k, past);
      ASSERT_EQ(static_cast<int64_t>(row.size()), keep + 1);
      const auto& qm = q_means[static_cast<size_t>(h)][static_cast<size_t>(qb)];
      std::vector<double> score(static_cast<size_t>(past));
      double top = 0;
      for (int64_t kb = 0; kb < past; ++kb) {
        const auto& km = k_means[static_cast<size_t>(h / (c.Hq / c.Hkv))][static_cast<size_t>(kb)];
        double& s = score[static_cast<size_t>(kb)];
        for (int64_t d = 0; d < c.Dh; ++d) s += qm[static_cast<size_t>(d)] * km[static_cast<size_t>(d)];
        top = std::max(top, std::abs(s));
      }
      std::vector<bool> chosen(static_cast<size_t>(past), false);
      double lowest_kept = INFINITY, highest_left = -INFINITY;
      for (int64_t i = 0; i < keep; ++i) {
        ASSERT_LT(row[static_cast<size_t>(i)], past);
        if (i > 0) {
          ASSERT_LT(row[static_cast<size_t>(i) - 1], row[static_cast<size_t>(i)]) << "sorted, unique";
        }
        chosen[static_cast<size_t>(row[static_cast<size_t>(i)])] = true;
        lowest_kept = std::min(lowest_kept, score[static_cast<size_t>(row[static_cast<size_t>(i)])]);
      }
      for (int64_t kb = 0; kb < past; ++kb)
        if (!chosen[static_cast<size_t>(kb)]) highest_left = std::max(highest_left, score[static_cast<size_t>(kb)]);
      EXPECT_GE(lowest_kept, highest_left - 1e-5 * (1 + top)) << "head " << h << " query block " << qb;
    }
}

void expect_hip_mask(std::mt19937_64& rng, const Case& c) {
  SCOPED_TRACE("hip " + describe(c));
  const QK in(rng, c);
  const attn::MaskGeometry g = geometry(c);
  const cuda::DeviceBlockMask gpu = cuda::hip_mask(g, in.q(), in.k(), c.top_k);
  const attn::BlockMask cpu = attn::hip_mask(g, in.args(c), c.top_k);
  EXPECT_EQ(gpu.host.row_start, cpu.row_start);
  expect_like_the_cpu(c, gpu, cpu);
}

// Case::top_k is read as the stride here. Tied: every token the same, so whole blocks
// tie and the lower ones must be kept first.
void expect_xattention_mask(std::mt19937_64& rng, const Case& c, double threshold, bool tied = false) {
  SCOPED_TRACE("xattention threshold " + std::to_string(threshold) + (tied ? " tied " : " ") + describe(c));
  QK in(rng, c);
  in.round_to_bf16();
  if (tied) in.repeat_first_token();
  const attn::MaskGeometry g = geometry(c);
  const float scale = 1.f / std::sqrt(static_cast<float>(c.Dh));
  attn::AttentionArgs args = in.args(c);
  args.scale = scale;
  const cuda::DeviceBlockMask gpu = cuda::xattention_mask(g, in.q(), in.k(), threshold, c.top_k, scale);
  EXPECT_TRUE(gpu.host.key_blocks.empty()) << "the blocks stay in GPU memory";
  expect_like_the_cpu(c, gpu, attn::xattention_mask(g, args, threshold, c.top_k));
}

enum class Input { random, sharpened, tied };

// tau 0: every head vertical-slash; tau 1 (past the largest distance, sqrt(ln 2)): every
// head query-aware; between, each head chooses.
void expect_flexprefill_mask(std::mt19937_64& rng, const Case& c, double gamma, double tau,
                             Input input = Input::random) {
  SCOPED_TRACE("flexprefill gamma " + std::to_string(gamma) + " tau " + std::to_string(tau) + " input " +
               std::to_string(static_cast<int>(input)) + " " + describe(c));
  QK in(rng, c);
  if (input == Input::tied) in.repeat_first_token();
  if (input == Input::sharpened) in.sharpen_even_heads(6.f);
  const attn::MaskGeometry g = geometry(c);
  const float scale = 1.f / std::sqrt(static_cast<float>(c.Dh));
  attn::AttentionArgs args = in.args(c);
  args.scale = scale;
  const cuda::DeviceBlockMask gpu = cuda::flexprefill_mask(g, in.q(), in.k(), gamma, tau, scale);
  EXPECT_TRUE(gpu.host.key_blocks.empty()) << "the blocks stay in GPU memory";
  expect_like_the_cpu(c, gpu, attn::flexprefill_mask(g, args, gamma, tau));
}

// Shapes both top-k selectors run: block sizes, GQA ratios, head dims (80: not a multiple
// of 32), sizes not a multiple of the block, a chunk against a cache, one token, a top_k
// past every row's blocks, and more than 32 ranges per HiP level.
const Case kTopKCases[] = {{1000, 1000, 0, 64, 4, 1, 64, 3},
                           {1000, 1000, 0, 128, 6, 2, 128, 2},
                           {129, 129, 0, 64, 2, 2, 80, 1},
                           {64 * 33 + 5, 64 * 33 + 5, 0, 64, 8, 8, 32, 5},
                           {300, 1004, 704, 64, 4, 2, 64, 4},
                           {1, 1, 0, 64, 3, 1, 64, 4},
                           {700, 700, 0, 64, 2, 1, 64, 100},
                           {5000, 5000, 0, 64, 3, 3, 128, 37},
                           {3000, 3000, 0, 64, 4, 4, 256, 6}};

TEST(CudaMobaMask, RealisesTheTopKRankingOfBlockMeans) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  for (const Case& c : kTopKCases) expect_moba_mask(rng, c);
  expect_moba_mask(rng, {700, 700, 0, 64, 2, 1, 64, 0});  // the diagonal alone
}

TEST(CudaMobaMask, ManyKeyBlocksTakeFewerRowsPerCta) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  // 7500 key blocks: their scores fit shared memory for fewer than 8 rows per CTA.
  expect_moba_mask(rng, {64 * 7500, 64 * 7500, 0, 64, 1, 1, 32, 3});
}

TEST(CudaHipMask, MatchesTheCpuSelector) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  for (const Case& c : kTopKCases) expect_hip_mask(rng, c);
  expect_hip_mask(rng, {64 * 3000, 64 * 3000, 0, 64, 1, 1, 32, 8});
}

TEST(CudaXAttentionMask, MatchesTheCpuSelector) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  expect_xattention_mask(rng, {1000, 1000, 0, 64, 4, 1, 64, 8}, 0.9);
  expect_xattention_mask(rng, {1000, 1000, 0, 128, 6, 2, 128, 16}, 0.5);
  expect_xattention_mask(rng, {129, 129, 0, 64, 2, 2, 80, 4}, 0.95);
  expect_xattention_mask(rng, {64 * 33 + 5, 64 * 33 + 5, 0, 64, 8, 8, 32, 8}, 0.9);
  expect_xattention_mask(rng, {300, 1004, 704, 64, 4, 2, 64, 8}, 0.8);  // chunked prefill against a cache
  expect_xattention_mask(rng, {1, 1, 0, 64, 3, 1, 64, 8}, 0.9);
  expect_xattention_mask(rng, {3000, 3000, 0, 64, 2, 1, 256, 1}, 1.0);  // stride 1: every element, all mass
  expect_xattention_mask(rng, {1000, 1000, 0, 64, 2, 1, 64, 8}, 0.5, true);
  expect_xattention_mask(rng, {64 * 40, 64 * 40, 0, 64, 1, 1, 64, 4}, 0.9, true);
}

TEST(CudaFlexPrefillMask, MatchesTheCpuSelector) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const Case shapes[] = {{1000, 1000, 0, 64, 4, 1, 64, 0},
                         {1000, 1000, 0, 128, 6, 2, 128, 0},
                         {129, 129, 0, 64, 2, 2, 80, 0},
                         {64 * 33 + 5, 64 * 33 + 5, 0, 64, 8, 8, 32, 0},
                         {300, 1004, 704, 64, 4, 2, 64, 0},  // chunked prefill against a cache
                         {1, 1, 0, 64, 3, 1, 64, 0},
                         {3000, 3000, 0, 64, 2, 1, 256, 0}};
  for (const Case& c : shapes) {
    expect_flexprefill_mask(rng, c, 0.9, 0.0);
    expect_flexprefill_mask(rng, c, 0.95, 1.0);
  }
  expect_flexprefill_mask(rng, {2000, 2000, 0, 64, 8, 2, 64, 0}, 0.9, 0.1, Input::sharpened);
  expect_flexprefill_mask(rng, {1000, 1000, 0, 64, 4, 4, 128, 0}, 0.8, 0.3, Input::sharpened);
  expect_flexprefill_mask(rng, {1000, 1000, 0, 64, 2, 1, 64, 0}, 0.5, 0.0, Input::tied);
  expect_flexprefill_mask(rng, {64 * 40, 64 * 40, 0, 64, 1, 1, 64, 0}, 0.9, 1.0, Input::tied);
}

TEST(CudaFlexPrefillMask, BadInputsAreClearErrors) {
  SUBQ_REQUIRE_GPU();
  const attn::MaskGeometry g{100, 100, 0, 64, 64, 4, nullptr};
  const Tensor q = cuda::empty(DType::f32, {100, 4, 64}), k = cuda::empty(DType::f32, {100, 2, 64});
  EXPECT_THROW(cuda::flexprefill_mask(g, q, k, 0.0, 0.1, 0.125f), Error);
  EXPECT_THROW(cuda::flexprefill_mask(g, q, k, 1.5, 0.1, 0.125f), Error);
  EXPECT_THROW(cuda::flexprefill_mask(g, q, cuda::empty(DType::bf16, {100, 2, 64}), 0.9, 0.1, 0.125f), Error);
  EXPECT_THROW(cuda::flexprefill_mask(g, q, cuda::empty(DType::f32, {100, 3, 64}), 0.9, 0.1, 0.125f), Error);
  EXPECT_THROW(cuda::flexprefill_mask(attn::MaskGeometry{100, 100, 0, 64, 128, 4, nullptr}, q, k, 0.9, 0.1, 0.125f),
               Error);
}

TEST(CudaXAttentionMask, BadInputsAreClearErrors) {
  SUBQ_REQUIRE_GPU();
  const attn::MaskGeometry g{100, 100, 0, 64, 64, 4, nullptr};
  const Tensor q = cuda::empty(DType::f32, {100, 4, 64}), k = cuda::empty(DType::f32, {100, 2, 64});
  EXPECT_THROW(cuda::xattention_mask(g, q, k, 0.9, 48, 0.125f), Error);  // stride does not divide the block
  EXPECT_THROW(cuda::xattention_mask(g, q, k, 0.0, 8, 0.125f), Error);
  EXPECT_THROW(cuda::xattention_mask(g, q, k, 1.5, 8, 0.125f), Error);
  EXPECT_THROW(cuda::xattention_mask(g, q, cuda::empty(DType::bf16, {100, 2, 64}), 0.9, 8, 0.125f), Error);
}

TEST(CudaHipMask, BadInputsAreClearErrors) {
  SUBQ_REQUIRE_GPU();
  const attn::MaskGeometry g{100, 100, 0, 64, 64, 4, nullptr};
  const Tensor q = cuda::empty(DType::f32, {100, 4, 64}), k = cuda::empty(DType::f32, {100, 2, 64});
  EXPECT_THROW(cuda::hip_mask(g, q, k, 0), Error);
  // 1000 kept ranges per row outgrow shared memory (1000 key blocks to choose from).
  const Tensor long_q = cuda::empty(DType::f32, {64000, 1, 32});
  EXPECT_THROW(cuda::hip_mask(attn::MaskGeometry{64000, 64000, 0, 64, 64, 1, nullptr}, long_q, long_q, 1000), Error);
  EXPECT_THROW(cuda::hip_mask(g, q, cuda::empty(DType::f32, {100, 3, 64}), 2), Error);
}

TEST(CudaMobaMask, BadInputsAreClearErrors) {
  SUBQ_REQUIRE_GPU();
  const attn::MaskGeometry g{100, 100, 0, 64, 64, 4, nullptr};
  const Tensor q = cuda::empty(DType::f32, {100, 4, 64}), k = cuda::empty(DType::f32, {100, 2, 64});
  EXPECT_THROW(cuda::moba_mask(g, q, k, -1), Error);
  EXPECT_THROW(cuda::moba_mask(attn::MaskGeometry{100, 100, 0, 64, 128, 4, nullptr}, q, k, 2), Error);
  EXPECT_THROW(cuda::moba_mask(g, cuda::empty(DType::bf16, {100, 4, 64}), k, 2), Error);
  EXPECT_THROW(cuda::moba_mask(g, Tensor::empty(DType::f32, {100, 4, 64}), k, 2), Error);
  EXPECT_THROW(cuda::moba_mask(g, q, cuda::empty(DType::f32, {100, 3, 64}), 2), Error);
  EXPECT_THROW(cuda::moba_mask(g, q, cuda::empty(DType::f32, {99, 2, 64}), 2), Error);
  EXPECT_THROW(cuda::moba_mask(g, q, cuda::empty(DType::f32, {100, 2, 32}), 2), Error);
  EXPECT_THROW(cuda::moba_mask(g, cuda::empty(DType::f32, {100, 4, 320}), cuda::empty(DType::f32, {100, 2, 320}), 2),
               Error);
  EXPECT_THROW(cuda::moba_mask(attn::MaskGeometry{100, 50, 0, 64, 64, 4, nullptr}, q,
                               cuda::empty(DType::f32, {50, 2, 64}), 2),
               Error);
}

}  // namespace
}  // namespace subq::test
