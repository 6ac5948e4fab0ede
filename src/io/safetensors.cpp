// safetensors: [u64 little-endian header length N][N bytes of JSON header][data section].
// The header maps tensor names to {dtype, shape, data_offsets: [begin, end]} with offsets
// relative to the data section, plus an optional "__metadata__" object of strings.
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "src/io/json.h"
#include "subq/io.h"

namespace subq {
namespace {

using io::Json;

// The reference implementation caps the header at 100 MB; real headers are a few MB.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

DType parse_dtype(const std::string& s, const std::string& where) {
  if (s == "F32") return DType::f32;
  if (s == "BF16") return DType::bf16;
  if (s == "F16") return DType::f16;
  if (s == "I8") return DType::i8;
  if (s == "I32") return DType::i32;
  throw Error(where + " has dtype '" + s + "', which subq does not support (F32, BF16, F16, I8, I32)");
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

Entry parse_entry(const std::string& name, const Json& j, uint64_t data_bytes, const std::string& label) {
  const std::string where = label + ": tensor '" + name + "'";
  if (!j.is_object()) throw Error(where + " must be an object, found " + io::json_type_name(j));
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!j.contains(field)) throw Error(where + ": field '" + field + "' missing");
  const Json& dtype = j["dtype"];
  const Json& shape = j["shape"];
  const Json& offsets = j["data_offsets"];
  if (!dtype.is_string())
    throw Error(where + ": field 'dtype' must be a string, found " + io::json_type_name(dtype));
  if (!shape.is_array())
    throw Error(where + ": field 'shape' must be an array, found " + io::json_type_name(shape));
  if (!offsets.is_array() || offsets.size() != 2)
    throw Error(where + ": field 'data_offsets' must be an array [begin, end]");

  Entry e{name, parse_dtype(dtype.get<std::string>(), where), Shape{}, 0, 0};
  if (shape.size() > static_cast<size_t>(kMaxDims))
    throw Error(where + " has " + std::to_string(shape.size()) + " dimensions; at most " +
                std::to_string(kMaxDims) + " are supported");
  std::vector<int64_t> dims;
  // numel * element size must fit in the data section, so bound the running product by it.
  uint64_t numel = 1;
  for (const Json& d : shape) {
    if (!d.is_number_unsigned())
      throw Error(where + ": shape entries must be non-negative integers, found " + io::json_brief(d));
    const uint64_t n = d.get<uint64_t>();
    if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw Error(where + ": shape entry " + io::json_brief(d) + " is too large");
    dims.push_back(static_cast<int64_t>(n));
    if (n != 0 && numel > std::numeric_limits<uint64_t>::max() / n) numel = std::numeric_limits<uint64_t>::max();
    else numel *= n;
  }
  e.shape = Shape(std::span<const int64_t>(dims));
  for (const Json& o : offsets)
    if (!o.is_number_unsigned())
      throw Error(where + ": data_offsets must be non-negative integers, found " + io::json_brief(o));
  e.begin = offsets[0].get<uint64_t>();
  e.end = offsets[1].get<uint64_t>();
  if (e.begin > e.end || e.end > data_bytes)
    throw Error(where + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                "] are outside the data section of " + std::to_string(data_bytes) + " bytes");
  const uint64_t elem = dtype_size(e.dtype);
  const bool overflow = numel > std::numeric_limits<uint64_t>::max() / elem;
  if (overflow || numel * elem != e.end - e.begin)
    throw Error(where + ": shape " + e.shape.str() + " of " + dtype_name(e.dtype) + " needs " +
                (overflow ? std::string("more than 2^64") : std::to_string(numel * elem)) +
                " bytes, but data_offsets give " + std::to_string(e.end - e.begin));
  return e;
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<Storage> bytes;
  try {
    bytes = Storage::map_file(path);
  } catch (const Error& e) {
    throw Error(path + ": cannot read the file (" + e.what() + ")");
  }
  return parse(std::move(bytes), path);
}

SafetensorsFile SafetensorsFile::parse(std::shared_ptr<Storage> bytes, const std::string& label) {
  if (!bytes) throw Error(label + ": no data");
  const uint64_t size = bytes->bytes();
  if (size < 8)
    throw Error(label + ": file is " + std::to_string(size) +
                " bytes, too short for the 8-byte header length of a safetensors file");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | static_cast<uint8_t>(bytes->data()[i]);
  if (header_len > size - 8)
    throw Error(label + ": header length " + std::to_string(header_len) + " runs past the end of the file (" +
                std::to_string(size) + " bytes)");
  if (header_len > kMaxHeaderBytes)
    throw Error(label + ": header length " + std::to_string(header_len) + " exceeds the limit of " +
                std::to_string(kMaxHeaderBytes) + " bytes");
  const std::string_view header(reinterpret_cast<const char*>(bytes->data()) + 8, header_len);
  const Json j = io::parse_json(header, label);
  if (!j.is_object()) throw Error(label + ": header must be a JSON object, found " + io::json_type_name(j));

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_bytes = size - data_start;
  SafetensorsFile f;
  f.path_ = label;
  f.storage_ = bytes;
  std::vector<Entry> entries;
  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      if (!value.is_object())
        throw Error(label + ": __metadata__ must be an object, found " + io::json_type_name(value));
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          throw Error(label + ": __metadata__ value '" + mk + "' must be a string, found " + io::json_type_name(mv));
        f.metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(key, value, data_bytes, label));
  }

  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const Entry& prev = *by_offset[i - 1];
    const Entry& cur = *by_offset[i];
    // Empty tensors occupy no bytes and cannot overlap anything.
    if (cur.begin < prev.end && cur.begin != cur.end)
      throw Error(label + ": tensors '" + prev.name + "' [" + std::to_string(prev.begin) + ", " +
                  std::to_string(prev.end) + ") and '" + cur.name + "' [" + std::to_string(cur.begin) + ", " +
                  std::to_string(cur.end) + ") overlap");
  }

  for (const Entry& e : entries) {
    const size_t offset = static_cast<size_t>(data_start + e.begin);
    Tensor t;
    if (offset % dtype_size(e.dtype) == 0) {
      t = Tensor::view_of(bytes, offset, e.dtype, e.shape);
    } else {
      // The format does not promise alignment; a misaligned typed pointer is undefined
      // behaviour, so such a tensor gets an aligned copy.
      t = Tensor::empty(e.dtype, e.shape);
      if (t.nbytes()) std::memcpy(t.mutable_raw_data(), bytes->data() + offset, t.nbytes());
    }
    f.tensors_.emplace(e.name, std::move(t));
  }
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) out.push_back(name);
  return out;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end())
    throw Error(path_ + ": tensor '" + name + "' not found (the file has " + std::to_string(tensors_.size()) +
                " tensors)");
  return it->second;
}

}  // namespace subq
