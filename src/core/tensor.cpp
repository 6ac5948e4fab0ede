#include "subq/tensor.h"

#include <cstring>
#include <sstream>

namespace subq {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i8: return 1;
    case DType::i32: return 4;
  }
  throw Error("invalid dtype");
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i8: return "i8";
    case DType::i32: return "i32";
  }
  return "invalid";
}

const char* device_name(Device d) {
  switch (d) {
    case Device::cpu: return "cpu";
    case Device::cuda: return "cuda";
  }
  return "invalid";
}

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::span<const int64_t>(dims.begin(), dims.size())) {}

Shape::Shape(std::span<const int64_t> dims) {
  if (dims.size() > static_cast<size_t>(kMaxDims))
    throw Error("shape has " + std::to_string(dims.size()) + " dimensions; at most " +
                std::to_string(kMaxDims) + " are supported");
  ndim_ = static_cast<int>(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] < 0) throw Error("shape dimension " + std::to_string(i) + " is negative (" +
                                 std::to_string(dims[i]) + ")");
    dims_[i] = dims[i];
  }
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= dims_[static_cast<size_t>(i)];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim_ != o.ndim_) return false;
  for (int i = 0; i < ndim_; ++i)
    if ((*this)[i] != o[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::ostringstream s;
  s << '[';
  for (int i = 0; i < ndim_; ++i) s << (i ? ", " : "") << (*this)[i];
  s << ']';
  return s.str();
}

namespace {

// Bytes needed for `shape` of `dtype`, refusing sizes that overflow size_t.
size_t checked_bytes(DType dtype, const Shape& shape) {
  size_t n = dtype_size(dtype);
  for (int i = 0; i < shape.ndim(); ++i) {
    const auto d = static_cast<size_t>(shape[i]);
    if (d != 0 && n > SIZE_MAX / d) throw Error("tensor of shape " + shape.str() + " is too large");
    n *= d;
  }
  return n;
}

std::array<int64_t, kMaxDims> contiguous_strides(const Shape& shape) {
  std::array<int64_t, kMaxDims> s{};
  int64_t acc = 1;
  for (int i = shape.ndim() - 1; i >= 0; --i) {
    s[static_cast<size_t>(i)] = acc;
    acc *= shape[i];
  }
  return s;
}

int normalize_dim(int dim, int ndim, const char* op) {
  const int d = dim < 0 ? dim + ndim : dim;
  if (d < 0 || d >= ndim)
    throw Error(std::string(op) + ": dimension " + std::to_string(dim) + " is out of range for " +
                std::to_string(ndim) + " dimensions");
  return d;
}

}  // namespace

Tensor Tensor::empty(DType dtype, const Shape& shape) {
  Tensor t;
  t.storage_ = Storage::allocate(checked_bytes(dtype, shape));
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::zeros(DType dtype, const Shape& shape) {
  Tensor t = empty(dtype, shape);
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

Tensor Tensor::view_of(std::shared_ptr<Storage> storage, size_t offset, DType dtype, const Shape& shape) {
  if (!storage) throw Error("view_of: null storage");
  const size_t bytes = checked_bytes(dtype, shape);
  if (offset > storage->bytes() || bytes > storage->bytes() - offset)
    throw Error("view_of: " + std::string(dtype_name(dtype)) + shape.str() + " at byte offset " +
                std::to_string(offset) + " needs " + std::to_string(bytes) + " bytes, but storage has " +
                std::to_string(storage->bytes()));
  Tensor t;
  t.storage_ = std::move(storage);
  t.offset_ = offset;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

int64_t Tensor::dim(int i) const { return shape_[normalize_dim(i, ndim(), "dim")]; }
int64_t Tensor::stride(int i) const { return strides_[static_cast<size_t>(normalize_dim(i, ndim(), "stride"))]; }

bool Tensor::is_contiguous() const {
  int64_t acc = 1;
  for (int i = ndim() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[static_cast<size_t>(i)] != acc) return false;
    acc *= shape_[i];
  }
  return true;
}

Tensor Tensor::view(std::initializer_list<int64_t> shape) const {
  std::array<int64_t, kMaxDims> dims{};
  if (shape.size() > static_cast<size_t>(kMaxDims)) throw Error("view: too many dimensions");
  int infer = -1;
  int64_t known = 1;
  size_t k = 0;
  for (int64_t d : shape) {
    if (d == -1 && infer < 0) infer = static_cast<int>(k);
    else if (d < 0) throw Error("view: invalid dimension " + std::to_string(d));
    else known *= d;
    dims[k++] = d;
  }
  if (infer >= 0) {
    if (known == 0 || numel() % known != 0)
      throw Error("view: cannot infer a dimension viewing " + str() + " with " + std::to_string(known) +
                  " elements per slice");
    dims[static_cast<size_t>(infer)] = numel() / known;
  }
  return view(Shape(std::span<const int64_t>(dims.data(), k)));
}

Tensor Tensor::view(const Shape& s) const {
  if (!is_contiguous()) throw Error("view: tensor " + str() + " is not contiguous");
  if (s.numel() != numel())
    throw Error("view: cannot view " + str() + " (" + std::to_string(numel()) + " elements) as " + s.str());
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int dim, int64_t start, int64_t end) const {
  const int d = normalize_dim(dim, ndim(), "slice");
  const int64_t n = shape_[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  if (start < 0 || end > n || start > end)
    throw Error("slice: range [" + std::to_string(start) + ", " + std::to_string(end) +
                ") is out of bounds for dimension " + std::to_string(d) + " of " + str());
  Tensor t = *this;
  t.offset_ += static_cast<size_t>(start * strides_[static_cast<size_t>(d)]) * dtype_size(dtype_);
  t.shape_[d] = end - start;
  return t;
}

Tensor Tensor::select(int dim, int64_t index) const {
  const int d = normalize_dim(dim, ndim(), "select");
  Tensor t = slice(d, index, index + 1);
  std::array<int64_t, kMaxDims> dims{};
  int k = 0;
  std::array<int64_t, kMaxDims> strides{};
  for (int i = 0; i < ndim(); ++i) {
    if (i == d) continue;
    dims[static_cast<size_t>(k)] = shape_[i];
    strides[static_cast<size_t>(k)] = strides_[static_cast<size_t>(i)];
    ++k;
  }
  t.shape_ = Shape(std::span<const int64_t>(dims.data(), static_cast<size_t>(k)));
  t.strides_ = strides;
  return t;
}

Tensor Tensor::transpose(int d0, int d1) const {
  const int a = normalize_dim(d0, ndim(), "transpose");
  const int b = normalize_dim(d1, ndim(), "transpose");
  Tensor t = *this;
  std::swap(t.shape_[a], t.shape_[b]);
  std::swap(t.strides_[static_cast<size_t>(a)], t.strides_[static_cast<size_t>(b)]);
  return t;
}

Tensor Tensor::contiguous() const {
  check_device(Device::cpu);
  Tensor out = empty(dtype_, shape_);
  const size_t es = dtype_size(dtype_);
  const int nd = ndim();
  if (numel() == 0) return out;
  std::array<int64_t, kMaxDims> idx{};
  std::byte* dst = out.raw();
  const std::byte* base = raw();
  for (int64_t i = 0; i < numel(); ++i) {
    int64_t off = 0;
    for (int k = 0; k < nd; ++k) off += idx[static_cast<size_t>(k)] * strides_[static_cast<size_t>(k)];
    std::memcpy(dst + static_cast<size_t>(i) * es, base + static_cast<size_t>(off) * es, es);
    for (int k = nd - 1; k >= 0; --k) {
      if (++idx[static_cast<size_t>(k)] < shape_[k]) break;
      idx[static_cast<size_t>(k)] = 0;
    }
  }
  return out;
}

std::string Tensor::str() const { return std::string(dtype_name(dtype_)) + shape_.str(); }

void Tensor::check_dtype(DType want) const {
  if (!storage_) throw Error("tensor is undefined");
  if (dtype_ != want)
    throw Error("tensor " + str() + " accessed as " + dtype_name(want));
}

void Tensor::check_writable() const {
  if (!storage_) throw Error("tensor is undefined");
  if (!storage_->writable()) throw Error("tensor " + str() + " is read-only (mapped from a file)");
}

void Tensor::check_device(Device want) const {
  if (!storage_) throw Error("tensor is undefined");
  if (storage_->device() != want)
    throw Error("tensor " + str() + " lives on " + device_name(storage_->device()) + " and was accessed from " +
                device_name(want) + "; copy it across first (src/core/cuda/device.h)");
}

void check_dtype(const Tensor& t, DType want, const char* what) {
  if (!t.defined()) throw Error(std::string(what) + ": tensor is undefined");
  if (t.dtype() != want)
    throw Error(std::string(what) + ": expected dtype " + dtype_name(want) + ", found " + t.str());
}

void check_shape(const Tensor& t, const Shape& want, const char* what) {
  if (!t.defined()) throw Error(std::string(what) + ": tensor is undefined");
  if (!(t.shape() == want))
    throw Error(std::string(what) + ": expected shape " + want.str() + ", found " + t.str());
}

void check_device(const Tensor& t, Device want, const char* what) {
  if (!t.defined()) throw Error(std::string(what) + ": tensor is undefined");
  if (t.device() != want)
    throw Error(std::string(what) + ": expected a tensor on " + device_name(want) + ", found " + t.str() + " on " +
                device_name(t.device()));
}

void check_contiguous(const Tensor& t, const char* what) {
  if (!t.defined()) throw Error(std::string(what) + ": tensor is undefined");
  if (!t.is_contiguous()) throw Error(std::string(what) + ": tensor " + t.str() + " must be contiguous");
}

}  // namespace subq
