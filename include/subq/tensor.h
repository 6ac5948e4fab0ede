// subq public API: errors, dtypes and the Tensor (a typed, strided view over storage).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>

namespace subq {

// Every invalid argument, malformed file or misuse of the API throws Error. The message
// names what was expected and what was found; the CLI prints it as `subq: error: ...`.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

enum class DType : uint8_t { f32, bf16, f16, i8, i32 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);

// 16-bit floats are stored as raw bits; conversions live in ops (convert.h).
struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<f16>() { return DType::f16; }
template <> constexpr DType dtype_of<int8_t>() { return DType::i8; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }

// Where a storage's bytes live. CPU code reads tensors through data<T>(), CUDA kernels
// through device_data<T>(); each refuses the other device, so a pointer is never used
// on the wrong side. src/core/cuda/device.h allocates CUDA storage and copies across.
enum class Device : uint8_t { cpu, cuda };
const char* device_name(Device d);

inline constexpr int kMaxDims = 6;

// A shape of up to kMaxDims dimensions, each >= 0.
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(std::span<const int64_t> dims);

  int ndim() const { return ndim_; }
  int64_t operator[](int i) const { return dims_[static_cast<size_t>(i)]; }
  int64_t& operator[](int i) { return dims_[static_cast<size_t>(i)]; }
  int64_t numel() const;
  bool operator==(const Shape& o) const;
  std::string str() const;  // "[2, 3, 4]"

 private:
  int ndim_ = 0;
  std::array<int64_t, kMaxDims> dims_{};
};

// Bytes that a tensor views. Owning storage is 64-byte aligned heap memory; mapped
// storage is a read-only mmap of a file (weights are never copied).
class Storage {
 public:
  virtual ~Storage() = default;
  std::byte* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  bool writable() const { return writable_; }
  Device device() const { return device_; }

  // Uninitialised host memory. Freed buffers of a MiB or more are kept (up to 1 GiB in
  // all) for the next request of their size: a forward pass asks for the same sizes
  // layer after layer. release_cached() frees what is kept; cached_bytes() is its size.
  static std::shared_ptr<Storage> allocate(size_t bytes);
  static void release_cached();
  static size_t cached_bytes();
  // Maps the whole file read-only. Throws Error naming the path if it cannot.
  static std::shared_ptr<Storage> map_file(const std::string& path);
  // Reads every page into memory now rather than at first use (a mapped file's pages
  // otherwise fault in during the first forward pass), calling step(n) after each part
  // of n bytes.
  void populate(const std::function<void(size_t)>& step) const;
  // Memory the system can still give without swapping (MemAvailable in /proc/meminfo),
  // in bytes; SIZE_MAX where it cannot be read.
  static size_t available_memory();

 protected:
  std::byte* data_ = nullptr;
  size_t bytes_ = 0;
  bool writable_ = false;
  Device device_ = Device::cpu;
};

// A dtype, shape and element strides over a Storage. Copies of a Tensor share storage;
// view(), slice(), transpose() never copy. Data accessors check the dtype.
class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(DType dtype, const Shape& shape);  // uninitialised, owning
  static Tensor zeros(DType dtype, const Shape& shape);
  // A contiguous view of `shape` at byte `offset` of `storage`; checks the range.
  static Tensor view_of(std::shared_ptr<Storage> storage, size_t offset, DType dtype,
                        const Shape& shape);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t dim(int i) const;  // negative i counts from the back
  int64_t stride(int i) const;
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  bool writable() const { return storage_ && storage_->writable(); }
  Device device() const { return storage_ ? storage_->device() : Device::cpu; }

  // Same data, new shape; requires a contiguous tensor and equal element count.
  // One dimension may be -1 and is inferred.
  Tensor view(std::initializer_list<int64_t> shape) const;
  Tensor view(const Shape& shape) const;
  // Elements [start, end) along dim (negative indices count from the back).
  Tensor slice(int dim, int64_t start, int64_t end) const;
  // Drops dimension `dim` at `index`.
  Tensor select(int dim, int64_t index) const;
  Tensor transpose(int d0, int d1) const;
  // A contiguous owning copy (same dtype); CPU tensors only.
  Tensor contiguous() const;

  template <class T> const T* data() const {
    check_dtype(dtype_of<T>());
    check_device(Device::cpu);
    return reinterpret_cast<const T*>(raw());
  }
  template <class T> T* mutable_data() const {
    check_dtype(dtype_of<T>());
    check_device(Device::cpu);
    check_writable();
    return reinterpret_cast<T*>(raw());
  }
  const void* raw_data() const {
    check_device(Device::cpu);
    return raw();
  }
  void* mutable_raw_data() const {
    check_device(Device::cpu);
    check_writable();
    return raw();
  }
  // The same, for a tensor in GPU memory (pointers valid only in CUDA kernels and copies).
  template <class T> const T* device_data() const {
    check_dtype(dtype_of<T>());
    check_device(Device::cuda);
    return reinterpret_cast<const T*>(raw());
  }
  template <class T> T* mutable_device_data() const {
    check_dtype(dtype_of<T>());
    check_device(Device::cuda);
    check_writable();
    return reinterpret_cast<T*>(raw());
  }
  const void* device_raw_data() const {
    check_device(Device::cuda);
    return raw();
  }
  void* mutable_device_raw_data() const {
    check_device(Device::cuda);
    check_writable();
    return raw();
  }

  // "f32[2, 3]" for messages.
  std::string str() const;

 private:
  std::byte* raw() const { return storage_ ? storage_->data() + offset_ : nullptr; }
  void check_dtype(DType want) const;
  void check_writable() const;
  void check_device(Device want) const;

  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  DType dtype_ = DType::f32;
  Shape shape_;
  std::array<int64_t, kMaxDims> strides_{};  // elements
};

// Argument checks used by every public entry point. `what` names the argument.
void check_dtype(const Tensor& t, DType want, const char* what);
void check_shape(const Tensor& t, const Shape& want, const char* what);
void check_contiguous(const Tensor& t, const char* what);
void check_device(const Tensor& t, Device want, const char* what);

}  // namespace subq
