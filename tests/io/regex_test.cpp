// The split regexes run on PCRE2 but must match as Oniguruma (used by `tokenizers`) does;
// \s differs on U+180E, which the pattern rewrite takes care of in every position.
#include "src/io/regex.h"

#include <gtest/gtest.h>

namespace subq::io {
namespace {

using Spans = std::vector<std::pair<size_t, size_t>>;

Spans find(const std::string& pattern, const std::string& subject) { return Regex(pattern, false, "t").find_all(subject); }

TEST(Regex, SpaceIsOnigurumaSpace) {
  const std::string mvs = "\xe1\xa0\x8e";  // U+180E MONGOLIAN VOWEL SEPARATOR, 3 bytes
  const std::string s = "a " + mvs + "\xc2\x85\t b";  // a, space, U+180E, NEL, tab, space, b
  EXPECT_EQ(find(R"(\s+)", s), (Spans{{1, 2}, {5, 9}}));
  EXPECT_EQ(find(R"([\s]+)", s), (Spans{{1, 2}, {5, 9}}));
  EXPECT_EQ(find(R"(\S+)", s), (Spans{{0, 1}, {2, 5}, {9, 10}}));
  EXPECT_EQ(find(R"([^\s]+)", s), (Spans{{0, 1}, {2, 5}, {9, 10}}));
  EXPECT_EQ(find(R"([^\s\p{L}]+)", s), (Spans{{2, 5}}));
  EXPECT_EQ(find(R"(\s+(?!\S))", "a   b"), (Spans{{1, 3}}));
}

TEST(Regex, RewriteLeavesOtherSyntaxAlone) {
  EXPECT_EQ(find(R"([]s]+)", "a]s]b"), (Spans{{1, 4}}));          // leading ] is literal
  EXPECT_EQ(find(R"([[:digit:]\s]+)", "x1 2y"), (Spans{{1, 4}}));  // POSIX class beside \s
  EXPECT_EQ(find(R"(\Q\s\E)", "a\\sb"), (Spans{{1, 3}}));          // quoted text stays literal
  EXPECT_EQ(find(R"(\\s)", "a\\sb"), (Spans{{1, 3}}));             // escaped backslash, then s
  EXPECT_EQ(Regex(".", true, "t").find_all("a.b"), (Spans{{1, 2}}));  // literal pattern
}

TEST(Regex, EmptyMatchesAreReportedLikeOniguruma) {
  // x* matches empty between characters, but not right after a non-empty match.
  EXPECT_EQ(find("x*", "axxb"), (Spans{{0, 0}, {1, 3}, {4, 4}}));
}

}  // namespace
}  // namespace subq::io
