// The CUDA backend's host side: device query, the one stream every subq kernel runs on,
// GPU tensors from a caching allocator, and copies between host and device. Usable from
// plain C++ (no CUDA headers). Without a usable GPU, every function here except
// available()/unavailable_reason() throws subq::Error saying why; nothing crashes.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "subq/tensor.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace subq::cuda {

using Stream = CUstream_st*;

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;  // compute capability
  int multiprocessors = 0;
  size_t global_memory = 0;          // bytes
  size_t l2_bytes = 0;
  size_t shared_memory_optin = 0;    // per block, after cudaFuncSetAttribute
};

// True when a GPU can run kernels; never throws. unavailable_reason() says why not.
bool available();
std::string unavailable_reason();
// Throws subq::Error with unavailable_reason() when there is no usable GPU.
void require_device();
// The current device (checked).
const DeviceInfo& device_info();

// Every subq kernel and copy runs in order on this stream (created on first use), so
// memory returned to the caching allocator can be reused by the next launch safely.
Stream stream();
void synchronize();  // waits for the stream; throws on any asynchronous kernel error

// Raw device memory from the caching allocator (plain cudaMalloc underneath, never
// managed memory). Freed blocks are kept for reuse by size; empty_cache() returns them.
void* device_alloc(size_t bytes);
void device_free(void* p);
size_t cached_bytes();
void empty_cache();

// The memory of a captured CUDA graph: its kernels reuse the same addresses on every
// replay, so what the captured work frees must stay the graph's. Between
// begin_graph_pool() and end_graph_pool() freed blocks go to the pool instead of back to
// the cache; destroying the pool (after the graph) returns them. One pool open at a time.
class GraphPool {
 public:
  ~GraphPool();
  GraphPool(const GraphPool&) = delete;
  GraphPool& operator=(const GraphPool&) = delete;

 private:
  GraphPool() = default;
  friend std::unique_ptr<GraphPool> begin_graph_pool();
  std::vector<std::pair<void*, size_t>> blocks_;
};
std::unique_ptr<GraphPool> begin_graph_pool();
void end_graph_pool();

// Tensors in GPU memory (Device::cuda): uninitialised, or copies of host tensors.
Tensor empty(DType dtype, const Shape& shape);
Tensor to_device(const Tensor& host);  // any CPU tensor (made contiguous first)
Tensor to_host(const Tensor& device);  // a contiguous CUDA tensor
// Sets every byte of a contiguous GPU tensor to 0 (on the stream).
void zero(const Tensor& t);
// Copies between two contiguous tensors of equal dtype and shape, any devices.
void copy(const Tensor& src, const Tensor& dst);

// CTAs of 256 threads for a grid-stride loop over n elements (at most 2^20 of them).
inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, int64_t{1} << 20));
}

}  // namespace subq::cuda
