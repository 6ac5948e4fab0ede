// GPU tensors: a Storage whose bytes come from the caching allocator, and copies.
#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"

namespace subq::cuda {
namespace {

class DeviceStorage final : public Storage {
 public:
  explicit DeviceStorage(size_t bytes) {
    data_ = static_cast<std::byte*>(device_alloc(bytes));
    bytes_ = bytes;
    writable_ = true;
    device_ = Device::cuda;
  }
  ~DeviceStorage() override { device_free(data_); }
};

cudaMemcpyKind kind(Device from, Device to) {
  if (from == Device::cpu) return to == Device::cpu ? cudaMemcpyHostToHost : cudaMemcpyHostToDevice;
  return to == Device::cpu ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
}

const void* bytes_of(const Tensor& t) { return t.device() == Device::cpu ? t.raw_data() : t.device_raw_data(); }
void* mutable_bytes_of(const Tensor& t) {
  return t.device() == Device::cpu ? t.mutable_raw_data() : t.mutable_device_raw_data();
}

}  // namespace

Tensor empty(DType dtype, const Shape& shape) {
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  return Tensor::view_of(std::make_shared<DeviceStorage>(bytes), 0, dtype, shape);
}

void zero(const Tensor& t) {
  check_device(t, Device::cuda, "cuda::zero");
  check_contiguous(t, "cuda::zero");
  if (t.nbytes() > 0) SUBQ_CUDA_CHECK(cudaMemsetAsync(mutable_bytes_of(t), 0, t.nbytes(), stream()));
}

void copy(const Tensor& src, const Tensor& dst) {
  check_contiguous(src, "cuda::copy src");
  check_contiguous(dst, "cuda::copy dst");
  if (src.dtype() != dst.dtype() || !(src.shape() == dst.shape()))
    throw Error("cuda::copy: src " + src.str() + " and dst " + dst.str() + " differ in dtype or shape");
  if (src.nbytes() == 0) return;
  SUBQ_CUDA_CHECK(cudaMemcpyAsync(mutable_bytes_of(dst), bytes_of(src), src.nbytes(),
                                  kind(src.device(), dst.device()), stream()));
  // Host buffers may be freed or read as soon as this returns.
  if (src.device() == Device::cpu || dst.device() == Device::cpu) synchronize();
}

Tensor to_device(const Tensor& host) {
  check_device(host, Device::cpu, "to_device");
  const Tensor c = host.is_contiguous() ? host : host.contiguous();
  Tensor out = empty(c.dtype(), c.shape());
  copy(c, out);
  return out;
}

Tensor to_host(const Tensor& device) {
  check_device(device, Device::cuda, "to_host");
  Tensor out = Tensor::empty(device.dtype(), device.shape());
  copy(device, out);
  return out;
}

}  // namespace subq::cuda
