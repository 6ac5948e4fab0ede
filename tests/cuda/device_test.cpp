// The CUDA host side: device query, copies both ways, device checks on tensor access,
// the caching allocator, and a clear error (never a crash) without a GPU.
#include "tests/cuda/cuda_test.h"

namespace subq::test {
namespace {

TEST(CudaDevice, WithoutGpuEveryEntryThrowsAClearError) {
  if (cuda::available()) GTEST_SKIP() << "a GPU is present; this checks the GPU-less path";
  EXPECT_FALSE(cuda::unavailable_reason().empty());
  EXPECT_THROW(cuda::require_device(), Error);
  EXPECT_THROW(cuda::empty(DType::f32, {4}), Error);
  EXPECT_THROW(cuda::to_device(Tensor::zeros(DType::f32, {4})), Error);
  EXPECT_THROW(cuda::stream(), Error);
}

TEST(CudaDevice, ReportsTheDevice) {
  SUBQ_REQUIRE_GPU();
  const auto& info = cuda::device_info();
  EXPECT_FALSE(info.name.empty());
  EXPECT_GE(info.major, 8) << "the kernels are built for sm_80 and sm_90";
  EXPECT_GT(info.multiprocessors, 0);
}

TEST(CudaDevice, CopiesRoundTripEveryDtype) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor h = host_tensor(uniform(rng, 3 * 37), {3, 37}, dt);
    const Tensor d = cuda::to_device(h);
    EXPECT_EQ(d.device(), Device::cuda);
    const Tensor d2 = cuda::empty(dt, {3, 37});
    cuda::copy(d, d2);
    expect_close(to_double(cuda::to_host(d2)), to_double(h), 0, 0, dtype_name(dt));
  }
}

TEST(CudaDevice, HostAndDeviceAccessorsRefuseTheOtherSide) {
  SUBQ_REQUIRE_GPU();
  const Tensor d = cuda::empty(DType::f32, {2, 3});
  EXPECT_THROW(d.data<float>(), Error);
  EXPECT_THROW(d.contiguous(), Error);
  EXPECT_NO_THROW(d.device_data<float>());
  const Tensor h = Tensor::zeros(DType::f32, {2, 3});
  EXPECT_THROW(h.device_data<float>(), Error);
  EXPECT_THROW(cuda::to_host(h), Error);
  EXPECT_THROW(cuda::copy(h, cuda::empty(DType::f32, {3, 2})), Error);
}

TEST(CudaDevice, CachingAllocatorReusesFreedBlocks) {
  SUBQ_REQUIRE_GPU();
  cuda::empty_cache();
  void* a = cuda::device_alloc(1000);
  cuda::device_free(a);
  EXPECT_GE(cuda::cached_bytes(), 1000u);
  void* b = cuda::device_alloc(900);  // same 512-byte size class as 1000
  EXPECT_EQ(a, b);
  cuda::device_free(b);
  cuda::empty_cache();
  EXPECT_EQ(cuda::cached_bytes(), 0u);
  int x = 0;
  EXPECT_THROW(cuda::device_free(&x), Error);
}

}  // namespace
}  // namespace subq::test
