// A compiled PCRE2 pattern in UTF + UCP mode (\p{L}, \s and friends follow Unicode), used
// for the pre-tokenizer splits of tokenizer.json.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace subq::io {

class Regex {
 public:
  // Throws Error "<label>: invalid regex ..." if the pattern does not compile. `literal`
  // matches the pattern text as is.
  Regex(const std::string& pattern, bool literal, const std::string& label);

  // Non-overlapping matches [begin, end) in `subject` (valid UTF-8), left to right, as
  // Oniguruma's find_iter (used by `tokenizers`) reports them: empty matches included,
  // except one right at the end of the previous match.
  // Throws Error if matching exceeds PCRE2's backtracking limits (a hostile pattern).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view subject) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace subq::io
