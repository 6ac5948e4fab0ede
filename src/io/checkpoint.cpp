// A checkpoint's weights: one safetensors file, or shards listed by
// model.safetensors.index.json ({"metadata": {...}, "weight_map": {tensor: shard file}}).
#include <filesystem>
#include <set>

#include "src/io/json.h"
#include "subq/io.h"

namespace subq {
namespace {

namespace fs = std::filesystem;
using io::Json;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Shards must be plain file names next to the index: a hostile index must not make us
// open files elsewhere ("../../secret", "/etc/passwd").
void check_shard_name(const std::string& shard, const std::string& tensor, const std::string& label) {
  if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
      shard.find('\\') != std::string::npos || shard.find('\0') != std::string::npos)
    throw Error(label + ": tensor '" + tensor + "' maps to shard '" + shard +
                "', which is not a file name in the checkpoint directory");
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path dir(path);
    // transformers looks for the single file first, then the index.
    if (fs::exists(dir / "model.safetensors", ec)) file = (dir / "model.safetensors").string();
    else if (fs::exists(dir / "model.safetensors.index.json", ec)) file = (dir / "model.safetensors.index.json").string();
    else throw Error(path + ": no model.safetensors or model.safetensors.index.json in this directory");
  }

  Checkpoint c;
  c.path_ = file;
  if (!ends_with(file, ".json")) {
    c.files_.push_back(SafetensorsFile::open(file));
    for (const std::string& name : c.files_[0].names()) c.where_[name] = 0;
    return c;
  }

  const Json index = io::parse_json(io::read_text_file(file), file);
  if (!index.is_object()) throw Error(file + ": must be a JSON object, found " + io::json_type_name(index));
  if (!index.contains("weight_map")) throw Error(file + ": field 'weight_map' missing");
  const Json& map = index["weight_map"];
  if (!map.is_object()) throw Error(file + ": field 'weight_map' must be an object, found " + io::json_type_name(map));
  if (map.empty()) throw Error(file + ": weight_map lists no tensors");

  const fs::path dir = fs::path(file).parent_path();
  std::map<std::string, size_t> shard_index;
  for (const auto& [tensor, shard_json] : map.items()) {
    if (!shard_json.is_string())
      throw Error(file + ": weight_map entry '" + tensor + "' must be a string, found " +
                  io::json_type_name(shard_json));
    const std::string shard = shard_json.get<std::string>();
    check_shard_name(shard, tensor, file);
    auto it = shard_index.find(shard);
    if (it == shard_index.end()) {
      const std::string shard_path = (dir / shard).string();
      if (!fs::exists(shard_path, ec))
        throw Error(file + ": shard '" + shard + "' (listed for tensor '" + tensor + "') does not exist");
      it = shard_index.emplace(shard, c.files_.size()).first;
      c.files_.push_back(SafetensorsFile::open(shard_path));
    }
    const SafetensorsFile& f = c.files_[it->second];
    if (!f.contains(tensor))
      throw Error(file + ": tensor '" + tensor + "' is listed in shard '" + shard + "' but absent from " + f.path());
    c.where_[tensor] = it->second;
  }
  // A tensor stored in two shards is ambiguous even if the index picks one.
  std::map<std::string, const SafetensorsFile*> seen;
  for (const SafetensorsFile& f : c.files_)
    for (const std::string& name : f.names()) {
      const auto [it, fresh] = seen.emplace(name, &f);
      if (!fresh)
        throw Error(file + ": tensor '" + name + "' is stored in two shards, " + it->second->path() + " and " +
                    f.path());
      if (!c.where_.count(name))
        throw Error(file + ": tensor '" + name + "' is in shard " + f.path() + " but not listed in weight_map");
    }
  return c;
}

void Checkpoint::populate(const std::function<void(int64_t done, int64_t total)>& progress) const {
  int64_t total = 0, done = 0;
  for (const SafetensorsFile& f : files_) total += static_cast<int64_t>(f.storage().bytes());
  if (static_cast<size_t>(total) > Storage::available_memory()) return;
  for (const SafetensorsFile& f : files_)
    f.storage().populate([&](size_t n) {
      done += static_cast<int64_t>(n);
      if (progress) progress(done, total);
    });
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, i] : where_) out.push_back(name);
  return out;
}

Tensor Checkpoint::get(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end())
    throw Error(path_ + ": tensor '" + name + "' not found (the checkpoint has " + std::to_string(where_.size()) +
                " tensors)");
  return files_[it->second].get(name);
}

Tensor Checkpoint::get(const std::string& name, DType dtype, const Shape& shape) const {
  Tensor t = get(name);
  if (t.dtype() != dtype || !(t.shape() == shape))
    throw Error(files_[where_.at(name)].path() + ": tensor '" + name + "' is " + t.str() + ", expected " +
                dtype_name(dtype) + shape.str());
  return t;
}

Tensor Checkpoint::get_float(const std::string& name, const Shape& shape) const {
  Tensor t = get(name);
  const bool is_float = t.dtype() == DType::f32 || t.dtype() == DType::bf16 || t.dtype() == DType::f16;
  if (!is_float || !(t.shape() == shape))
    throw Error(files_[where_.at(name)].path() + ": tensor '" + name + "' is " + t.str() + ", expected " +
                "f32, bf16 or f16 of shape " + shape.str());
  return t;
}

}  // namespace subq
