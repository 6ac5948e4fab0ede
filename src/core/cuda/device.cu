#include <mutex>
#include <string>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"

namespace subq::cuda {

void throw_error(cudaError_t code, const char* call, const char* file, int line) {
  // Clear a non-sticky error so the next call does not report it again.
  cudaGetLastError();
  throw Error(std::string("CUDA error in ") + call + " at " + file + ":" + std::to_string(line) + ": " +
              cudaGetErrorName(code) + " (" + cudaGetErrorString(code) + ")");
}

namespace {

struct Probe {
  bool ok = false;
  std::string reason;
};

const Probe& probe() {
  static const Probe p = [] {
    Probe r;
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
      cudaGetLastError();
      r.reason = std::string("no usable CUDA GPU: cudaGetDeviceCount failed with ") + cudaGetErrorName(e) + " (" +
                 cudaGetErrorString(e) + ")";
    } else if (count == 0) {
      r.reason = "no usable CUDA GPU: cudaGetDeviceCount found 0 devices";
    } else {
      r.ok = true;
    }
    return r;
  }();
  return p;
}

}  // namespace

bool available() { return probe().ok; }
std::string unavailable_reason() { return probe().reason; }

void require_device() {
  if (!available()) throw Error("subq CUDA backend: " + unavailable_reason());
}

const DeviceInfo& device_info() {
  require_device();
  static const DeviceInfo info = [] {
    DeviceInfo d;
    SUBQ_CUDA_CHECK(cudaGetDevice(&d.index));
    cudaDeviceProp p{};
    SUBQ_CUDA_CHECK(cudaGetDeviceProperties(&p, d.index));
    d.name = p.name;
    d.major = p.major;
    d.minor = p.minor;
    d.multiprocessors = p.multiProcessorCount;
    d.global_memory = p.totalGlobalMem;
    d.l2_bytes = static_cast<size_t>(p.l2CacheSize);
    d.shared_memory_optin = p.sharedMemPerBlockOptin;
    return d;
  }();
  return info;
}

Stream stream() {
  require_device();
  static const Stream s = [] {
    cudaStream_t created = nullptr;
    SUBQ_CUDA_CHECK(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking));
    return created;
  }();
  return s;
}

void synchronize() { SUBQ_CUDA_CHECK(cudaStreamSynchronize(stream())); }

}  // namespace subq::cuda
