#define PCRE2_CODE_UNIT_WIDTH 8
#include "src/io/regex.h"

#include <pcre2.h>

#include "src/io/utf8.h"
#include "subq/tensor.h"

namespace subq::io {
namespace {

// Bounds on backtracking so a pathological pattern from an untrusted file fails with an
// error instead of running for hours; real pre-tokenizer patterns stay far below them.
constexpr uint32_t kMatchLimit = 10'000'000;
constexpr uint32_t kDepthLimit = 100'000;

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

// Oniguruma's Unicode \s (what `tokenizers` runs) is U+0009..U+000D, U+0085 and the Z
// categories; PCRE2's also takes U+180E. Spelling \s and \S out keeps the two equal.
constexpr const char* kSpace = "\\x09-\\x0d\\x{85}\\p{Z}";

std::string onig_compatible(const std::string& pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    const char next = i + 1 < pattern.size() ? pattern[i + 1] : '\0';
    if (c == '\\' && next == 'Q') {  // \Q...\E quotes literally
      const size_t end = pattern.find("\\E", i + 2);
      const size_t stop = end == std::string::npos ? pattern.size() : end + 2;
      out.append(pattern, i, stop - i);
      i = stop - 1;
    } else if (c == '\\' && next == 's') {
      out += in_class ? std::string(kSpace) : "[" + std::string(kSpace) + "]";
      ++i;
    } else if (c == '\\' && next == 'S' && !in_class) {
      out += "[^" + std::string(kSpace) + "]";
      ++i;
    } else if (c == '\\' && next != '\0') {
      out += c;
      out += next;
      ++i;
    } else if (c == '[' && in_class && next == ':') {  // [:alpha:] inside a class
      const size_t end = pattern.find(":]", i + 2);
      const size_t stop = end == std::string::npos ? i + 1 : end + 2;
      out.append(pattern, i, stop - i);
      i = stop - 1;
    } else if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (next == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];  // a leading ] is literal
    } else {
      if (c == ']') in_class = false;
      out += c;
    }
  }
  return out;
}

}  // namespace

struct Regex::Impl {
  pcre2_code* code = nullptr;
  pcre2_match_context* context = nullptr;
  std::string label;
  ~Impl() {
    pcre2_match_context_free(context);
    pcre2_code_free(code);
  }
};

Regex::Regex(const std::string& pattern, bool literal, const std::string& label) {
  auto impl = std::make_shared<Impl>();
  impl->label = label;
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  // PCRE2_LITERAL admits no UCP (a literal needs no character properties).
  const uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
  const std::string source = literal ? pattern : onig_compatible(pattern);
  impl->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(), options, &error,
                             &error_offset, nullptr);
  if (!impl->code)
    throw Error(label + ": invalid regex at offset " + std::to_string(error_offset) + ": " + pcre2_message(error));
  // JIT is an optimisation only; without it (unsupported CPU) the interpreter runs.
  pcre2_jit_compile(impl->code, PCRE2_JIT_COMPLETE);
  impl->context = pcre2_match_context_create(nullptr);
  if (!impl->context) throw Error(label + ": out of memory creating a regex match context");
  pcre2_set_match_limit(impl->context, kMatchLimit);
  pcre2_set_depth_limit(impl->context, kDepthLimit);
  impl_ = std::move(impl);
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view subject) const {
  std::vector<std::pair<size_t, size_t>> out;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(impl_->code, nullptr);
  if (!md) throw Error(impl_->label + ": out of memory creating regex match data");
  const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  size_t pos = 0;
  size_t last_end = std::string_view::npos;
  while (pos <= subject.size()) {
    // The subject was validated once by the caller.
    const int rc = pcre2_match(impl_->code, s, subject.size(), pos, PCRE2_NO_UTF_CHECK, md, impl_->context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      throw Error(impl_->label + ": regex matching failed: " + pcre2_message(rc));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t begin = ov[0], end = ov[1];
    if (end > begin) {
      out.emplace_back(begin, end);
      last_end = pos = end;
      continue;
    }
    // An empty match right after the previous match is not reported; either way the
    // search moves on by one character.
    if (begin != last_end) out.emplace_back(begin, begin);
    last_end = begin;
    if (begin >= subject.size()) break;
    pos = begin + utf8_char_length(static_cast<unsigned char>(subject[begin]));
  }
  pcre2_match_data_free(md);
  return out;
}

}  // namespace subq::io
