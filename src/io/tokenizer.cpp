// tokenizer.json: loading and the encode/decode pipeline of Hugging Face `tokenizers`
// restricted to byte-level BPE:
//   added tokens that are not normalized are split off the raw text (leftmost, longest);
//   the rest is normalized (NFC) and split on the normalized added tokens;
//   each remaining piece runs through the pre-tokenizer steps (Split regexes, then
//   ByteLevel: optional prefix space, optional GPT-2 regex, bytes -> alphabet);
//   BPE per word; the post-processor's template adds special tokens.
#include <algorithm>
#include <array>
#include <optional>

#include "src/io/bpe.h"
#include "src/io/byte_level.h"
#include "src/io/json.h"
#include "src/io/normalize.h"
#include "src/io/regex.h"
#include "src/io/utf8.h"
#include "subq/io.h"

namespace subq {
namespace {

using io::Json;

// The split pattern that the ByteLevel pre-tokenizer applies when use_regex is true.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Real vocabularies number their tokens densely; a file whose ids run far past its token
// count is rejected so that it cannot make us allocate an id table of gigabytes.
constexpr int64_t kMaxIdSlack = 1 << 20;

// Leftmost-longest matching of added tokens (what `tokenizers` does with Aho-Corasick):
// a byte trie, walked from each position of the text for the longest token there.
class AddedMatcher {
 public:
  AddedMatcher() : nodes_(1) {}

  void add(const std::string& content, int32_t id) {
    size_t node = 0;
    for (const char c : content) {
      const auto byte = static_cast<unsigned char>(c);
      const size_t k = child_index(node, byte);
      if (k < nodes_[node].next.size() && nodes_[node].next[k].first == byte) {
        node = nodes_[node].next[k].second;
        continue;
      }
      const size_t child = nodes_.size();
      nodes_[node].next.insert(nodes_[node].next.begin() + static_cast<std::ptrdiff_t>(k), {byte, child});
      nodes_.emplace_back();
      node = child;
    }
    nodes_[node].id = id;
  }

  // Calls text(piece) for the text between matches and token(id) for each match.
  template <class OnText, class OnToken>
  void split(std::string_view s, OnText&& text, OnToken&& token) const {
    size_t start = 0;
    for (size_t i = 0; i < s.size();) {
      const auto [len, id] = longest_at(s, i);
      if (len == 0) {
        ++i;
        continue;
      }
      if (i > start) text(s.substr(start, i - start));
      token(id);
      i += len;
      start = i;
    }
    if (start < s.size()) text(s.substr(start));
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, size_t>> next;  // sorted by byte
    int32_t id = -1;                                      // a token ends here
  };

  // Position in nodes_[node].next where `byte` is or would be inserted.
  size_t child_index(size_t node, unsigned char byte) const {
    const auto& next = nodes_[node].next;
    return static_cast<size_t>(
        std::lower_bound(next.begin(), next.end(), byte, [](const auto& e, unsigned char b) { return e.first < b; }) -
        next.begin());
  }

  std::pair<size_t, int32_t> longest_at(std::string_view s, size_t i) const {
    std::pair<size_t, int32_t> best{0, -1};
    size_t node = 0;
    for (size_t j = i; j < s.size(); ++j) {
      const auto byte = static_cast<unsigned char>(s[j]);
      const size_t k = child_index(node, byte);
      if (k == nodes_[node].next.size() || nodes_[node].next[k].first != byte) break;
      node = nodes_[node].next[k].second;
      if (nodes_[node].id >= 0) best = {j - i + 1, nodes_[node].id};
    }
    return best;
  }

  std::vector<Node> nodes_;
};

struct PreStep {
  std::optional<io::Regex> regex;  // Split's pattern, or ByteLevel's GPT-2 pattern
  bool byte_level = false;
  bool remove_matches = false;  // Split behaviour "Removed" (otherwise "Isolated")
  bool add_prefix_space = false;
};

const Json& field(const Json& j, const char* name, const std::string& where) {
  if (!j.is_object()) throw Error(where + " must be an object, found " + io::json_type_name(j));
  const auto it = j.find(name);
  if (it == j.end()) throw Error(where + ": field '" + name + "' missing");
  return *it;
}

std::string string_field(const Json& j, const char* name, const std::string& where) {
  const Json& v = field(j, name, where);
  if (!v.is_string()) throw Error(where + ": field '" + name + "' must be a string, found " + io::json_type_name(v));
  return v.get<std::string>();
}

bool bool_field(const Json& j, const char* name, bool fallback, const std::string& where) {
  const auto it = j.find(name);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean())
    throw Error(where + ": field '" + name + "' must be a boolean, found " + io::json_type_name(*it));
  return it->get<bool>();
}

int32_t id_value(const Json& v, const std::string& where) {
  if (!v.is_number_unsigned() || v.get<uint64_t>() > static_cast<uint64_t>(INT32_MAX))
    throw Error(where + " must be a token id (an integer in [0, 2^31)), found " + io::json_brief(v));
  return static_cast<int32_t>(v.get<uint64_t>());
}

}  // namespace

struct Tokenizer::Impl {
  std::string path;
  bool nfc = false;
  AddedMatcher raw_added, normalized_added;
  std::vector<PreStep> steps;
  std::optional<io::Bpe> bpe;
  std::vector<int32_t> bos_ids, eos_ids;  // the single-sequence template around $A

  std::vector<std::string> id_token, id_bytes;
  std::vector<uint8_t> id_known, id_special;
  std::unordered_map<std::string, int32_t> added_ids;

  void load_normalizer(const Json& j, const std::string& where, int depth);
  void load_pre_tokenizer(const Json& j, const std::string& where, int depth);
  void load_post_processor(const Json& j, const std::string& where, int depth);
  void encode_text(std::string_view text, std::vector<int32_t>& ids) const;
};

void Tokenizer::Impl::load_normalizer(const Json& j, const std::string& where, int depth) {
  if (depth > io::kMaxComponentDepth) throw Error(where + ": Sequences nested too deeply");
  if (j.is_null()) return;
  const std::string type = string_field(j, "type", where);
  if (type == "NFC") {
    nfc = true;
  } else if (type == "Sequence") {
    const Json& list = field(j, "normalizers", where);
    if (!list.is_array()) throw Error(where + ": field 'normalizers' must be an array");
    for (const Json& n : list) load_normalizer(n, where, depth + 1);
  } else {
    throw Error(where + ": normalizer '" + type + "' is not supported (only NFC)");
  }
}

void Tokenizer::Impl::load_pre_tokenizer(const Json& j, const std::string& where, int depth) {
  if (depth > io::kMaxComponentDepth) throw Error(where + ": Sequences nested too deeply");
  if (j.is_null()) throw Error(where + " is null; byte-level BPE needs a ByteLevel pre-tokenizer");
  const std::string type = string_field(j, "type", where);
  if (type == "Sequence") {
    const Json& list = field(j, "pretokenizers", where);
    if (!list.is_array()) throw Error(where + ": field 'pretokenizers' must be an array");
    for (const Json& p : list) load_pre_tokenizer(p, where, depth + 1);
    return;
  }
  if (!steps.empty() && steps.back().byte_level)
    throw Error(where + ": '" + type + "' after ByteLevel is not supported (ByteLevel must come last)");
  PreStep step;
  if (type == "ByteLevel") {
    step.byte_level = true;
    // `tokenizers` requires add_prefix_space and defaults use_regex to true (the
    // published GPT-NeoX file omits it).
    if (!field(j, "add_prefix_space", where).is_boolean())
      throw Error(where + ": field 'add_prefix_space' must be a boolean");
    step.add_prefix_space = j["add_prefix_space"].get<bool>();
    if (bool_field(j, "use_regex", true, where)) step.regex.emplace(kGpt2Pattern, false, where);
  } else if (type == "Split") {
    const Json& pattern = field(j, "pattern", where);
    if (!pattern.is_object() || pattern.size() != 1 || !(pattern.contains("Regex") || pattern.contains("String")) ||
        !pattern.begin()->is_string())
      throw Error(where + ": Split pattern must be {\"Regex\": \"...\"} or {\"String\": \"...\"}");
    step.regex.emplace(pattern.begin()->get<std::string>(), pattern.contains("String"), where);
    const std::string behavior = string_field(j, "behavior", where);
    if (behavior == "Removed") step.remove_matches = true;
    else if (behavior != "Isolated")
      throw Error(where + ": Split behavior '" + behavior + "' is not supported (Isolated, Removed)");
    if (bool_field(j, "invert", false, where)) throw Error(where + ": Split with invert = true is not supported");
  } else {
    throw Error(where + ": pre-tokenizer '" + type + "' is not supported (ByteLevel, Split, Sequence)");
  }
  steps.push_back(std::move(step));
}

void Tokenizer::Impl::load_post_processor(const Json& j, const std::string& where, int depth) {
  if (depth > io::kMaxComponentDepth) throw Error(where + ": Sequences nested too deeply");
  if (j.is_null()) return;
  const std::string type = string_field(j, "type", where);
  if (type == "ByteLevel") return;  // it only adjusts offsets
  if (type == "Sequence") {
    const Json& list = field(j, "processors", where);
    if (!list.is_array()) throw Error(where + ": field 'processors' must be an array");
    for (const Json& p : list) load_post_processor(p, where, depth + 1);
    return;
  }
  if (type != "TemplateProcessing")
    throw Error(where + ": post-processor '" + type + "' is not supported (ByteLevel, TemplateProcessing)");
  const Json& single = field(j, "single", where);
  const Json& specials = field(j, "special_tokens", where);
  if (!single.is_array()) throw Error(where + ": field 'single' must be an array");
  bool seen_a = false;
  for (const Json& item : single) {
    if (item.contains("Sequence")) {
      const std::string id = string_field(item["Sequence"], "id", where + ".single");
      if (id != "A" || seen_a) throw Error(where + ": the single template must hold sequence $A exactly once");
      seen_a = true;
      continue;
    }
    if (!item.contains("SpecialToken"))
      throw Error(where + ": template items must be SpecialToken or Sequence, found " + io::json_brief(item));
    const std::string name = string_field(item["SpecialToken"], "id", where + ".single");
    if (!specials.is_object() || !specials.contains(name))
      throw Error(where + ": template token '" + name + "' is not in special_tokens");
    const Json& ids = field(specials[name], "ids", where + ".special_tokens." + name);
    if (!ids.is_array()) throw Error(where + ".special_tokens." + name + ": field 'ids' must be an array");
    for (const Json& id : ids) (seen_a ? eos_ids : bos_ids).push_back(id_value(id, where + ".special_tokens." + name));
  }
  if (!seen_a) throw Error(where + ": the single template has no sequence $A");
}

Tokenizer Tokenizer::load(const std::string& path) { return parse(io::read_text_file(path), path); }

Tokenizer Tokenizer::parse(std::string_view json_text, const std::string& label) {
  const Json doc = io::parse_json(json_text, label);
  if (!doc.is_object()) throw Error(label + ": must be a JSON object, found " + io::json_type_name(doc));
  auto impl = std::make_shared<Impl>();
  impl->path = label;

  // ---- model ----
  const std::string mw = label + ": model";
  const Json& model = field(doc, "model", label);
  if (model.contains("type") && string_field(model, "type", mw) != "BPE")
    throw Error(mw + ": type '" + model["type"].get<std::string>() + "' is not supported (only BPE)");
  if (bool_field(model, "byte_fallback", false, mw)) throw Error(mw + ": byte_fallback is not supported");
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(affix) && !model[affix].is_null() && model[affix] != "")
      throw Error(mw + ": " + affix + " is not supported");
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"] != 0)
    throw Error(mw + ": BPE dropout is not supported (it makes encoding random)");
  const Json& vocab_json = field(model, "vocab", mw);
  if (!vocab_json.is_object()) throw Error(mw + ": field 'vocab' must be an object");
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(vocab_json.size());
  int64_t max_id = -1;
  for (const auto& [token, id_json] : vocab_json.items()) {
    const int32_t id = id_value(id_json, mw + ": vocab entry '" + token + "'");
    vocab.emplace(token, id);
    max_id = std::max<int64_t>(max_id, id);
  }
  const Json& merges_json = field(model, "merges", mw);
  if (!merges_json.is_array()) throw Error(mw + ": field 'merges' must be an array");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(merges_json.size());
  for (size_t i = 0; i < merges_json.size(); ++i) {
    const Json& m = merges_json[i];
    const std::string where = mw + ": merge " + std::to_string(i);
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == s.size())
        throw Error(where + " must be \"left right\", found \"" + s + "\"");
      merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      throw Error(where + " must be \"left right\" or [\"left\", \"right\"], found " + io::json_brief(m));
    }
  }
  std::optional<std::string> unk;
  if (model.contains("unk_token") && !model["unk_token"].is_null()) unk = string_field(model, "unk_token", mw);
  const bool ignore_merges = bool_field(model, "ignore_merges", false, mw);
  const bool fuse_unk = bool_field(model, "fuse_unk", false, mw);

  // ---- added tokens ----
  struct Added {
    std::string content;
    int32_t id;
    bool special, normalized;
  };
  std::vector<Added> added;
  if (doc.contains("added_tokens") && !doc["added_tokens"].is_null()) {
    const Json& list = doc["added_tokens"];
    if (!list.is_array()) throw Error(label + ": field 'added_tokens' must be an array");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string where = label + ": added_tokens[" + std::to_string(i) + "]";
      Added a;
      a.content = string_field(list[i], "content", where);
      a.id = id_value(field(list[i], "id", where), where + ": id");
      a.special = bool_field(list[i], "special", false, where);
      a.normalized = bool_field(list[i], "normalized", !a.special, where);
      if (a.content.empty()) throw Error(where + " has empty content");
      for (const char* flag : {"single_word", "lstrip", "rstrip"})
        if (bool_field(list[i], flag, false, where))
          throw Error(where + " ('" + a.content + "') sets " + flag + ", which is not supported");
      const auto in_vocab = vocab.find(a.content);
      if (in_vocab != vocab.end() && in_vocab->second != a.id)
        throw Error(where + " ('" + a.content + "') has id " + std::to_string(a.id) + " but the vocab gives it " +
                    std::to_string(in_vocab->second));
      max_id = std::max<int64_t>(max_id, a.id);
      added.push_back(std::move(a));
    }
  }
  const int64_t entries = static_cast<int64_t>(vocab.size() + added.size());
  if (max_id >= entries + kMaxIdSlack)
    throw Error(label + ": token id " + std::to_string(max_id) + " is far beyond the " + std::to_string(entries) +
                " tokens the file defines");

  // ---- pipeline ----
  static const Json null_json;
  const auto member = [&](const char* name) -> const Json& { return doc.contains(name) ? doc[name] : null_json; };
  impl->load_normalizer(member("normalizer"), label + ": normalizer", 0);
  impl->load_pre_tokenizer(member("pre_tokenizer"), label + ": pre_tokenizer", 0);
  if (impl->steps.empty()) throw Error(label + ": pre_tokenizer has no steps; byte-level BPE needs ByteLevel");
  if (!impl->steps.back().byte_level)
    throw Error(label + ": pre_tokenizer must end with ByteLevel (only byte-level BPE is supported)");
  impl->load_post_processor(member("post_processor"), label + ": post_processor", 0);
  const Json& decoder = member("decoder");
  const bool typed = decoder.is_object() && decoder.contains("type") && decoder["type"].is_string();
  const std::string decoder_type = typed ? decoder["type"].get<std::string>() : io::json_brief(decoder);
  if (decoder_type != "ByteLevel") throw Error(label + ": decoder must be ByteLevel, found " + decoder_type);

  // ---- id tables ----
  const size_t n = static_cast<size_t>(max_id + 1);
  impl->id_token.resize(n);
  impl->id_bytes.resize(n);
  impl->id_known.assign(n, 0);
  impl->id_special.assign(n, 0);
  for (const auto& [token, id] : vocab) {
    const auto i = static_cast<size_t>(id);
    if (impl->id_known[i])
      throw Error(label + ": model: tokens '" + impl->id_token[i] + "' and '" + token + "' share id " +
                  std::to_string(id));
    impl->id_known[i] = 1;
    impl->id_token[i] = token;
  }
  for (const Added& a : added) {
    const auto i = static_cast<size_t>(a.id);
    if (!impl->added_ids.emplace(a.content, a.id).second)
      throw Error(label + ": added token '" + a.content + "' is listed twice");
    impl->id_known[i] = 1;
    impl->id_token[i] = a.content;
    impl->id_special[i] = a.special;
    if (a.normalized) impl->normalized_added.add(impl->nfc ? io::normalize_nfc(a.content) : a.content, a.id);
    else impl->raw_added.add(a.content, a.id);
  }
  for (size_t i = 0; i < n; ++i)
    if (impl->id_known[i]) impl->id_bytes[i] = io::byte_level_decode(impl->id_token[i]);
  for (const int32_t id : impl->bos_ids)
    if (static_cast<size_t>(id) >= n || !impl->id_known[static_cast<size_t>(id)])
      throw Error(label + ": post_processor adds token id " + std::to_string(id) + ", which has no token");
  for (const int32_t id : impl->eos_ids)
    if (static_cast<size_t>(id) >= n || !impl->id_known[static_cast<size_t>(id)])
      throw Error(label + ": post_processor adds token id " + std::to_string(id) + ", which has no token");

  impl->bpe.emplace(std::move(vocab), merges, ignore_merges, unk, fuse_unk, label + ": model");
  return Tokenizer(std::move(impl));
}

void Tokenizer::Impl::encode_text(std::string_view text, std::vector<int32_t>& ids) const {
  std::vector<std::string> pieces{std::string(text)};
  std::vector<std::string> next;
  for (const PreStep& step : steps) {
    next.clear();
    for (std::string& piece : pieces) {
      if (step.byte_level && step.add_prefix_space && !piece.empty() && piece[0] != ' ') piece.insert(piece.begin(), ' ');
      if (!step.regex) {
        next.push_back(std::move(piece));
        continue;
      }
      size_t prev = 0;
      for (const auto& [begin, end] : step.regex->find_all(piece)) {
        if (begin > prev) next.push_back(piece.substr(prev, begin - prev));
        if (end > begin && !step.remove_matches) next.push_back(piece.substr(begin, end - begin));
        prev = end;
      }
      if (prev < piece.size()) next.push_back(piece.substr(prev));
    }
    std::swap(pieces, next);
  }
  std::string word;
  for (const std::string& piece : pieces) {
    word.clear();
    io::append_byte_level(piece, word);
    bpe->encode_word(word, ids);
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const size_t bad = io::find_invalid_utf8(text);
  if (bad != std::string_view::npos)
    throw Error(impl_->path + ": cannot encode text that is not valid UTF-8 (invalid byte 0x" +
                [&] {
                  static constexpr char hex[] = "0123456789abcdef";
                  const auto b = static_cast<unsigned char>(text[bad]);
                  return std::string{hex[b >> 4], hex[b & 15]};
                }() +
                " at offset " + std::to_string(bad) + ")");
  const Impl& t = *impl_;
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = t.bos_ids;
  const auto push_token = [&](int32_t id) { ids.push_back(id); };
  const auto encode_normalized = [&](std::string_view piece) {
    t.normalized_added.split(piece, [&](std::string_view s) { t.encode_text(s, ids); }, push_token);
  };
  t.raw_added.split(
      text,
      [&](std::string_view piece) {
        if (t.nfc) encode_normalized(io::normalize_nfc(piece));
        else encode_normalized(piece);
      },
      push_token);
  if (add_special_tokens) ids.insert(ids.end(), t.eos_ids.begin(), t.eos_ids.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (const int32_t id : ids) {
    if (!known(id) || (skip_special_tokens && is_special(id))) continue;
    bytes += impl_->id_bytes[static_cast<size_t>(id)];
  }
  std::string out;
  io::append_utf8_lossy(bytes, true, out);
  return out;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_token.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  const std::string key(token);
  if (const auto it = impl_->added_ids.find(key); it != impl_->added_ids.end()) return it->second;
  if (const auto it = impl_->bpe->vocab().find(key); it != impl_->bpe->vocab().end()) return it->second;
  return std::nullopt;
}

bool Tokenizer::known(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_known.size() && impl_->id_known[static_cast<size_t>(id)];
}

bool Tokenizer::is_special(int32_t id) const { return known(id) && impl_->id_special[static_cast<size_t>(id)]; }

const std::string& Tokenizer::id_to_token(int32_t id) const {
  static const std::string none;
  return known(id) ? impl_->id_token[static_cast<size_t>(id)] : none;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  static const std::string none;
  return known(id) ? impl_->id_bytes[static_cast<size_t>(id)] : none;
}

TokenDecoder::TokenDecoder(Tokenizer tokenizer, bool skip_special_tokens)
    : tokenizer_(std::move(tokenizer)), skip_special_(skip_special_tokens) {}

std::string TokenDecoder::push(int32_t id) {
  if (!tokenizer_.known(id) || (skip_special_ && tokenizer_.is_special(id))) return {};
  pending_ += tokenizer_.token_bytes(id);
  std::string out;
  pending_.erase(0, io::append_utf8_lossy(pending_, false, out));
  return out;
}

std::string TokenDecoder::finish() {
  std::string out;
  io::append_utf8_lossy(pending_, true, out);
  pending_.clear();
  return out;
}

}  // namespace subq
