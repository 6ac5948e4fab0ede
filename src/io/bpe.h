// The BPE model of tokenizer.json: vocabulary, merges by rank, and the merge loop of
// Hugging Face `tokenizers` (lowest rank first, leftmost on ties).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace subq::io {

class Bpe {
 public:
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };

  // vocab maps token strings to ids; merges are (left, right) pairs in rank order.
  // Throws Error (starting with `label`) for merges that name tokens outside the vocab.
  Bpe(std::unordered_map<std::string, int32_t> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges,
      std::optional<std::string> unk_token, bool fuse_unk, const std::string& label);

  // Appends the ids of one pre-tokenized word (a string of byte-level characters).
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  const std::unordered_map<std::string, int32_t>& vocab() const { return vocab_; }

 private:
  static uint64_t key(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  bool ignore_merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_;
};

}  // namespace subq::io
