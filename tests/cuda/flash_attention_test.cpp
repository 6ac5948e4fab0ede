// Flash attention (tensor cores, bf16) against the float64 reference on the same
// bf16-rounded inputs. Tolerance: P is rounded to bf16 before the PV product (relative
// 2^-9 per weight) and o is stored as bf16 (relative 2^-9), so |err| <= 6e-3 + 1e-2 |o|
// holds with margin for outputs of magnitude <= 1; a wrong mask, scale or head mapping
// is off by far more.
#include <cmath>

#include "src/ops/attention/flash_attention.h"
#include "tests/cuda/cuda_test.h"
#include "tests/reference/attention_dense.h"

namespace subq::test {
namespace {

struct AttnCase {
  int64_t B, Tq, Tk, H, Hkv, D;
  bool causal;
};

void run_case(const AttnCase& c) {
  SCOPED_TRACE("B=" + std::to_string(c.B) + " Tq=" + std::to_string(c.Tq) + " Tk=" + std::to_string(c.Tk) +
               " H=" + std::to_string(c.H) + " Hkv=" + std::to_string(c.Hkv) + " D=" + std::to_string(c.D) +
               (c.causal ? " causal" : " full"));
  auto rng = rng_for_test();
  const Shape qs{c.B, c.Tq, c.H, c.D}, ks{c.B, c.Tk, c.Hkv, c.D};
  // Normal q, k: scores q.k * D^-1/2 have unit spread, so the softmax is far from flat.
  const Tensor q = host_tensor(normal(rng, static_cast<size_t>(qs.numel())), qs, DType::bf16);
  const Tensor k = host_tensor(normal(rng, static_cast<size_t>(ks.numel())), ks, DType::bf16);
  const Tensor v = host_tensor(uniform(rng, static_cast<size_t>(ks.numel())), ks, DType::bf16);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));

  const Tensor o = poisoned_device_tensor(DType::bf16, qs);
  cuda::flash_attention(cuda::to_device(q), cuda::to_device(k), cuda::to_device(v), o, c.causal,
                        static_cast<float>(scale));
  const auto want = ref::attention(to_double(q), to_double(k), to_double(v), c.B, c.Tq, c.Tk, c.H, c.Hkv, c.D,
                                   c.causal, scale);
  expect_close(device_values(o), want, 1e-2, 6e-3, "flash_attention");
}

TEST(CudaFlashAttention, MatchesReferenceOnAwkwardSizes) {
  SUBQ_REQUIRE_GPU();
  for (bool causal : {false, true})
    for (int64_t D : {64, 128})
      for (int64_t T : {1, 17, 100, 1000}) run_case({1, T, T, 4, 4, D, causal});
}

TEST(CudaFlashAttention, HeadDim256) {
  SUBQ_REQUIRE_GPU();
  for (bool causal : {false, true}) {
    run_case({1, 100, 100, 2, 1, 256, causal});
    run_case({2, 1, 1, 2, 2, 256, causal});
    run_case({1, 33, 200, 4, 2, 256, causal});
  }
}

// More query blocks than the GPU has SMs: the Hopper kernel's persistent CTAs each take
// several items, so stage buffers and barrier phases carry over from one to the next.
TEST(CudaFlashAttention, PersistentCtasTakeSeveralItems) {
  SUBQ_REQUIRE_GPU();
  for (bool causal : {false, true})
    for (int64_t D : {64, 128, 256}) run_case({4, 130, 130, 32, 8, D, causal});
}

TEST(CudaFlashAttention, GroupedQueryHeadsAndBatch) {
  SUBQ_REQUIRE_GPU();
  for (bool causal : {false, true}) {
    run_case({2, 130, 130, 6, 2, 128, causal});
    run_case({3, 65, 65, 8, 1, 64, causal});
  }
}

TEST(CudaFlashAttention, FewerQueriesThanKeysAlignsCausalMaskAtTheEnd) {
  SUBQ_REQUIRE_GPU();
  run_case({1, 17, 300, 4, 2, 128, true});
  run_case({2, 1, 77, 2, 1, 64, true});
  run_case({1, 33, 250, 4, 4, 64, false});
}

TEST(CudaFlashAttention, MoreQueriesThanKeysGivesZeroRowsUnderCausalMask) {
  SUBQ_REQUIRE_GPU();
  run_case({1, 200, 50, 2, 2, 64, true});
}

TEST(CudaFlashAttention, RejectsBadArguments) {
  SUBQ_REQUIRE_GPU();
  const Tensor q = cuda::empty(DType::bf16, {1, 8, 2, 64});
  const Tensor k = cuda::empty(DType::bf16, {1, 8, 2, 64});
  EXPECT_THROW(cuda::flash_attention(q, k, k, cuda::empty(DType::bf16, {1, 8, 2, 32}), false, 0.125f), Error);
  EXPECT_THROW(cuda::flash_attention(q, cuda::empty(DType::bf16, {1, 8, 3, 64}), k, q, false, 0.125f), Error);
  EXPECT_THROW(cuda::flash_attention(cuda::empty(DType::f32, {1, 8, 2, 64}), k, k, q, false, 0.125f), Error);
  const Tensor host_q = Tensor::empty(DType::bf16, {1, 8, 2, 64});
  EXPECT_THROW(cuda::flash_attention(host_q, k, k, q, false, 0.125f), Error);
  const Tensor q96 = cuda::empty(DType::bf16, {1, 8, 2, 96});
  EXPECT_THROW(cuda::flash_attention(q96, q96, q96, q96, false, 0.125f), Error);
}

}  // namespace
}  // namespace subq::test
