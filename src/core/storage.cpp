#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "subq/tensor.h"

namespace subq {
namespace {

constexpr size_t kAlignment = 64;
// Buffers of several MiB are 2 MiB-aligned and offered transparent huge pages: kernels
// walk [T, D] activations a column block at a time, one row (a page or more at model
// widths) per token, and on 4 KiB pages every row costs a TLB walk (the selective scan's
// time per token grew 18% from T = 1K to 256K on 4 KiB pages, 9% on huge pages).
constexpr size_t kHugePage = size_t{2} << 20;

class HeapStorage final : public Storage {
 public:
  explicit HeapStorage(size_t bytes) {
    // Round up so aligned_alloc's size rule holds; never ask for 0 bytes.
    const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    align_ = rounded >= 2 * kHugePage ? kHugePage : kAlignment;
    // operator new (not aligned_alloc) so heap accounting, such as the bench's, sees it.
    try {
      data_ = static_cast<std::byte*>(::operator new(rounded ? rounded : kAlignment, std::align_val_t{align_}));
    } catch (const std::bad_alloc&) {
      throw Error("out of memory allocating " + std::to_string(bytes) + " bytes");
    }
    // Advice only: where huge pages are off, this fails and changes nothing.
    if (align_ == kHugePage) ::madvise(data_, rounded / kHugePage * kHugePage, MADV_HUGEPAGE);
    bytes_ = bytes;
    writable_ = true;
  }
  ~HeapStorage() override { ::operator delete(data_, std::align_val_t{align_}); }

 private:
  size_t align_ = kAlignment;
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

std::shared_ptr<Storage> Storage::map_file(const std::string& path) {
  return std::make_shared<MappedStorage>(path);
}

}  // namespace subq
