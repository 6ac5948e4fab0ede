// subq public API: readers for the files of a Hugging Face model directory —
// safetensors weights (single or sharded), config.json and a byte-level BPE tokenizer.json.
// Every file is untrusted: malformed input throws subq::Error whose message starts with
// the file's path and names the field or tensor at fault; nothing reads out of bounds.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "subq/tensor.h"

namespace subq {

// ---- safetensors ------------------------------------------------------------------------

// One .safetensors file, mapped read-only. Tensors are zero-copy views of the mapping
// (a tensor whose bytes are not aligned to its element size is copied once, so typed
// access stays well-defined).
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);
  // Parses `bytes` as a safetensors file; `label` stands for the path in messages.
  static SafetensorsFile parse(std::shared_ptr<Storage> bytes, const std::string& label);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws Error naming the file and the tensor if it is absent.
  Tensor get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The file's bytes (the mapping the tensors view).
  const Storage& storage() const { return *storage_; }

 private:
  std::string path_;
  std::shared_ptr<Storage> storage_;
  std::map<std::string, Tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// The weights of a checkpoint: a model directory (model.safetensors, or else
// model.safetensors.index.json with its shards), a .safetensors file, or an index file.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& path);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  size_t size() const { return where_.size(); }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  Tensor get(const std::string& name) const;
  // get() that also checks the dtype and shape the caller expects.
  Tensor get(const std::string& name, DType dtype, const Shape& shape) const;
  // get() that checks the shape and accepts any floating dtype (f32, bf16, f16).
  Tensor get_float(const std::string& name, const Shape& shape) const;
  // Reads every file into memory now (see Storage::populate), reporting bytes read so
  // far and in all after each part; does nothing when the files exceed the memory
  // available, where reading ahead would only evict its own first parts.
  void populate(const std::function<void(int64_t done, int64_t total)>& progress) const;

 private:
  std::string path_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// ---- config.json ----------------------------------------------------------------------

// Typed read-only access to a JSON object such as config.json. Errors name the file and
// the field: "DIR/config.json: field 'hidden_size' missing",
// "...: field 'hidden_size' must be an integer, found string".
// get<T> / get_or<T> exist for int64_t, double, bool, std::string and std::vector of
// int64_t, double and std::string. A field that is null counts as absent.
class Config {
 public:
  static Config load(const std::string& path);
  static Config parse(std::string_view json_text, const std::string& label);

  const std::string& path() const;
  bool has(const std::string& field) const;
  template <class T> T get(const std::string& field) const;
  template <class T> T get_or(const std::string& field, T fallback) const;
  // A nested object ("rope_scaling"); its errors name the field as "rope_scaling.factor".
  Config object(const std::string& field) const;
  std::vector<std::string> keys() const;

 private:
  struct Impl;
  explicit Config(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

extern template int64_t Config::get<int64_t>(const std::string&) const;
extern template double Config::get<double>(const std::string&) const;
extern template bool Config::get<bool>(const std::string&) const;
extern template std::string Config::get<std::string>(const std::string&) const;
extern template std::vector<int64_t> Config::get<std::vector<int64_t>>(const std::string&) const;
extern template std::vector<double> Config::get<std::vector<double>>(const std::string&) const;
extern template std::vector<std::string> Config::get<std::vector<std::string>>(const std::string&) const;
extern template int64_t Config::get_or<int64_t>(const std::string&, int64_t) const;
extern template double Config::get_or<double>(const std::string&, double) const;
extern template bool Config::get_or<bool>(const std::string&, bool) const;
extern template std::string Config::get_or<std::string>(const std::string&, std::string) const;
extern template std::vector<int64_t> Config::get_or<std::vector<int64_t>>(const std::string&,
                                                                           std::vector<int64_t>) const;
extern template std::vector<double> Config::get_or<std::vector<double>>(const std::string&,
                                                                         std::vector<double>) const;
extern template std::vector<std::string> Config::get_or<std::vector<std::string>>(
    const std::string&, std::vector<std::string>) const;

// ---- tokenizer.json -------------------------------------------------------------------

// Byte-level BPE exactly as Hugging Face `tokenizers` runs it for GPT-NeoX (Mamba,
// Mamba-2) and Llama-3 style tokenizers: added/special tokens matched first (longest
// match), normalizer (none or NFC), pre-tokenizer (ByteLevel with the GPT-2 regex, or
// Split regexes followed by ByteLevel), BPE merges by rank, TemplateProcessing
// post-processor, ByteLevel decoder. Features outside that set are rejected at load with
// an Error naming them.
class Tokenizer {
 public:
  static Tokenizer load(const std::string& path);
  static Tokenizer parse(std::string_view json_text, const std::string& label);

  // Throws Error if `text` is not valid UTF-8. add_special_tokens applies the
  // post-processor (e.g. Llama-3's <|begin_of_text|>).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Lossy like `tokenizers`: invalid UTF-8 becomes U+FFFD; ids without a token are skipped.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // One more than the largest token id.
  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token's string as stored in tokenizer.json ("" for an id without a token).
  const std::string& id_to_token(int32_t id) const;
  // The bytes the token stands for (what decoding it contributes before UTF-8 repair).
  const std::string& token_bytes(int32_t id) const;
  bool is_special(int32_t id) const;
  bool known(int32_t id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Turns a stream of token ids into UTF-8 text as they arrive: bytes of a character that a
// later token completes are held back, so the concatenation of push() results and
// finish() equals Tokenizer::decode of all ids. It shares the tokenizer's tables.
class TokenDecoder {
 public:
  explicit TokenDecoder(Tokenizer tokenizer, bool skip_special_tokens = false);
  // The text that this token completes (possibly empty).
  std::string push(int32_t id);
  // Flushes held bytes of an unfinished character (as U+FFFD) and resets.
  std::string finish();

 private:
  Tokenizer tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace subq
