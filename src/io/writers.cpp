#include "src/io/writers.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "src/io/json.h"

namespace subq::io {
namespace {

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i8: return "I8";
    case DType::i32: return "I32";
  }
  throw Error("invalid dtype");
}

// Writes `bytes` producers to path via path.tmp + rename.
template <class WriteFn>
void write_atomically(const std::string& path, WriteFn write) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw Error("cannot write " + path + ": " + std::strerror(errno));
    write(f);
    f.flush();
    if (!f) {
      std::remove(tmp.c_str());
      throw Error("cannot write " + path + ": write failed");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw Error("cannot write " + path + ": " + ec.message());
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const Tensor c = t.is_contiguous() ? t : t.contiguous();
    std::vector<int64_t> shape;
    for (int i = 0; i < c.ndim(); ++i) shape.push_back(c.dim(i));
    header[name] = {{"dtype", safetensors_dtype(c.dtype())}, {"shape", shape}, {"data_offsets", {offset, offset + c.nbytes()}}};
    offset += c.nbytes();
    data.push_back(c);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data section 8-byte aligned
  write_atomically(path, [&](std::ofstream& f) {
    const uint64_t n = text.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    f.write(reinterpret_cast<const char*>(len), 8);
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const Tensor& t : data)
      f.write(static_cast<const char*>(t.raw_data()), static_cast<std::streamsize>(t.nbytes()));
  });
}

void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  int64_t n = 1;
  for (int64_t d : shape) {
    dims += std::to_string(d) + ",";
    n *= d;
  }
  if (shape.size() > 1) dims.pop_back();
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Magic (6) + version (2) + length (2) + header, padded with spaces to 64 bytes, ending in \n.
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  write_atomically(path, [&](std::ofstream& f) {
    f.write("\x93NUMPY\x01\x00", 8);
    const uint16_t len = static_cast<uint16_t>(header.size());
    const char lb[2] = {static_cast<char>(len & 0xFF), static_cast<char>(len >> 8)};
    f.write(lb, 2);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * sizeof(float)));
  });
}

}  // namespace subq::io
