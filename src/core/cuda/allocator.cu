// A caching allocator over plain cudaMalloc. Blocks are rounded to a size class and kept
// on free lists when released, so steady-state inference allocates nothing from the
// driver. All work runs on one stream (device.h), so a released block's last use is
// ordered before any later kernel that reuses it.
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "src/core/cuda/check.cuh"
#include "src/core/cuda/device.h"

namespace subq::cuda {
namespace {

constexpr size_t kSmallGranule = 512;
constexpr size_t kLargeGranule = size_t{2} << 20;
constexpr size_t kLargeFrom = size_t{1} << 20;

size_t size_class(size_t bytes) {
  const size_t g = bytes >= kLargeFrom ? kLargeGranule : kSmallGranule;
  return (std::max<size_t>(bytes, 1) + g - 1) / g * g;
}

class CachingAllocator {
 public:
  void* allocate(size_t bytes) {
    require_device();
    const size_t size = size_class(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(size);
    if (it != free_.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      cached_ -= size;
      live_[p] = size;
      return p;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached_locked();
      e = cudaMalloc(&p, size);
    }
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      throw Error("CUDA out of memory allocating " + std::to_string(bytes) + " bytes");
    }
    SUBQ_CUDA_CHECK(e);
    live_[p] = size;
    return p;
  }

  void release(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) throw Error("device_free: pointer was not allocated by subq's CUDA allocator");
    if (pool_) {
      pool_->emplace_back(p, it->second);
    } else {
      free_[it->second].push_back(p);
      cached_ += it->second;
    }
    live_.erase(it);
  }

  void begin_pool(std::vector<std::pair<void*, size_t>>* pool) {
    std::lock_guard<std::mutex> lock(mu_);
    if (pool_) throw Error("begin_graph_pool: a graph pool is already open");
    pool_ = pool;
  }
  void end_pool() {
    std::lock_guard<std::mutex> lock(mu_);
    pool_ = nullptr;
  }
  void return_blocks(const std::vector<std::pair<void*, size_t>>& blocks) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [p, size] : blocks) {
      free_[size].push_back(p);
      cached_ += size;
    }
  }

  size_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

  void empty() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached_locked();
  }

 private:
  void release_cached_locked() {
    // cudaFree synchronises the device, so no kernel still uses these blocks.
    for (auto& [size, blocks] : free_)
      for (void* p : blocks) SUBQ_CUDA_CHECK(cudaFree(p));
    free_.clear();
    cached_ = 0;
  }

  std::mutex mu_;
  std::vector<std::pair<void*, size_t>>* pool_ = nullptr;  // open graph pool, if any
  std::map<size_t, std::vector<void*>> free_;
  std::unordered_map<void*, size_t> live_;
  size_t cached_ = 0;
};

// Never destroyed: tensors held in static objects may be released after static
// destructors have run, and the driver reclaims all device memory at process exit.
CachingAllocator& allocator() {
  static auto* a = new CachingAllocator;
  return *a;
}

}  // namespace

GraphPool::~GraphPool() { allocator().return_blocks(blocks_); }

std::unique_ptr<GraphPool> begin_graph_pool() {
  auto pool = std::unique_ptr<GraphPool>(new GraphPool);
  allocator().begin_pool(&pool->blocks_);
  return pool;
}
void end_graph_pool() { allocator().end_pool(); }

void* device_alloc(size_t bytes) { return allocator().allocate(bytes); }
void device_free(void* p) { allocator().release(p); }
size_t cached_bytes() { return allocator().cached(); }
void empty_cache() { allocator().empty(); }

}  // namespace subq::cuda
