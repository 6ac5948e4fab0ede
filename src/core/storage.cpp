#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "subq/tensor.h"

namespace subq {
namespace {

constexpr size_t kAlignment = 64;
// Buffers of a MiB or more are 2 MiB-aligned and offered transparent huge pages: kernels
// walk [T, D] activations a column block at a time, one row (a page or more at model
// widths) per token, and on 4 KiB pages every row costs a TLB walk (the selective scan's
// time per token grew 18% from T = 1K to 256K on 4 KiB pages, 9% on huge pages).
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kLargeFrom = size_t{1} << 20;
// Freed large buffers wait in a cache for the next request of their size class (whole
// huge pages), up to this many bytes in all. A forward pass allocates the same activation
// sizes layer after layer and call after call; from malloc, buffers this large are often
// fresh mappings, zero-filled and faulted in page by page again each time, and unmapped
// on free with a TLB shootdown across every core. On 16 threads of a Xeon VM a 3-second
// Llama-160M prefill bench took 2 million page faults (~15% of its samples in the
// kernel's fault path, page-table locks contended by the pool).
constexpr size_t kMaxCachedBytes = size_t{1} << 30;

size_t size_class(size_t bytes) {
  if (bytes >= kLargeFrom) return (bytes + kHugePage - 1) / kHugePage * kHugePage;
  // Round up so aligned new's size rule holds; never ask for 0 bytes.
  return bytes ? (bytes + kAlignment - 1) / kAlignment * kAlignment : kAlignment;
}

std::byte* allocate_block(size_t size, size_t align, size_t bytes) {
  try {
    // operator new (not mmap) so heap accounting, such as the bench's, sees it.
    auto* p = static_cast<std::byte*>(::operator new(size, std::align_val_t{align}));
    // Advice only: where huge pages are off, this fails and changes nothing.
    if (align == kHugePage) ::madvise(p, size, MADV_HUGEPAGE);
    return p;
  } catch (const std::bad_alloc&) {
    throw Error("out of memory allocating " + std::to_string(bytes) + " bytes");
  }
}

class LargeBlockCache {
 public:
  std::byte* take(size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(size);
    if (it == free_.end() || it->second.empty()) return nullptr;
    std::byte* p = it->second.back();
    it->second.pop_back();
    cached_ -= size;
    return p;
  }
  // Keeps the block unless the cache is full; false means the caller frees it.
  bool give(std::byte* p, size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    if (cached_ + size > kMaxCachedBytes) return false;
    free_[size].push_back(p);
    cached_ += size;
    return true;
  }
  size_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }
  void release() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [size, blocks] : free_)
      for (std::byte* p : blocks) ::operator delete(p, std::align_val_t{kHugePage});
    free_.clear();
    cached_ = 0;
  }

 private:
  std::mutex mu_;
  std::map<size_t, std::vector<std::byte*>> free_;
  size_t cached_ = 0;
};

// Never destroyed: tensors held in static objects may be released after static
// destructors have run.
LargeBlockCache& large_blocks() {
  static auto* cache = new LargeBlockCache;
  return *cache;
}

class HeapStorage final : public Storage {
 public:
  explicit HeapStorage(size_t bytes) : size_(size_class(bytes)) {
    const bool large = size_ >= kLargeFrom;
    data_ = large ? large_blocks().take(size_) : nullptr;
    if (!data_) data_ = allocate_block(size_, large ? kHugePage : kAlignment, bytes);
    bytes_ = bytes;
    writable_ = true;
  }
  ~HeapStorage() override {
    if (size_ >= kLargeFrom) {
      if (!large_blocks().give(data_, size_)) ::operator delete(data_, std::align_val_t{kHugePage});
    } else {
      ::operator delete(data_, std::align_val_t{kAlignment});
    }
  }

 private:
  size_t size_;
};

class MappedStorage final : public Storage {
 public:
  explicit MappedStorage(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error("cannot open " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error("cannot map " + path + ": not a regular file");
    }
    bytes_ = static_cast<size_t>(st.st_size);
    if (bytes_ > 0) {
      void* p = ::mmap(nullptr, bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        throw Error("cannot map " + path + ": " + std::strerror(err));
      }
      data_ = static_cast<std::byte*>(p);
    }
    ::close(fd);
    writable_ = false;
  }
  ~MappedStorage() override {
    if (data_) ::munmap(data_, bytes_);
  }
};

}  // namespace

std::shared_ptr<Storage> Storage::allocate(size_t bytes) { return std::make_shared<HeapStorage>(bytes); }

void Storage::release_cached() { large_blocks().release(); }
size_t Storage::cached_bytes() { return large_blocks().cached(); }

std::shared_ptr<Storage> Storage::map_file(const std::string& path) {
  return std::make_shared<MappedStorage>(path);
}

size_t Storage::available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  unsigned long long kib = 0;
  for (std::string line; std::getline(meminfo, line);)
    if (std::sscanf(line.c_str(), "MemAvailable: %llu kB", &kib) == 1) return static_cast<size_t>(kib) * 1024;
  return SIZE_MAX;
}

void Storage::populate(const std::function<void(size_t)>& step) const {
  // Parts of 64 MiB, so a progress line moves; MADV_POPULATE_READ (Linux 5.14) reads a
  // part in one call, older kernels get one read per page.
  constexpr size_t kPart = size_t{64} << 20;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const auto base = reinterpret_cast<uintptr_t>(data_);
  for (size_t off = 0; off < bytes_; off += kPart) {
    const size_t n = std::min(kPart, bytes_ - off);
    const uintptr_t first = (base + off) / page * page;
#ifdef MADV_POPULATE_READ
    const bool done = ::madvise(reinterpret_cast<void*>(first), base + off + n - first, MADV_POPULATE_READ) == 0;
#else
    const bool done = false;
#endif
    if (!done) {
      const auto* bytes = reinterpret_cast<const volatile std::byte*>(data_);
      for (size_t i = off; i < off + n; i += page) (void)bytes[i];
      (void)bytes[off + n - 1];  // the part's last page, when its start is not page-aligned
    }
    if (step) step(n);
  }
}

}  // namespace subq
