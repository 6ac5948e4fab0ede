// UTF-8 validation and lossy repair with the same replacement rule as Rust's
// String::from_utf8_lossy (one U+FFFD per maximal invalid subpart), which is what
// Hugging Face `tokenizers` applies when decoding byte-level tokens.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace subq::io {

// Byte offset of the first invalid UTF-8 sequence, or std::string_view::npos.
size_t find_invalid_utf8(std::string_view s);

// Appends `bytes` to `out`, replacing invalid sequences with U+FFFD. If `final` is false,
// a trailing sequence that is valid so far but unfinished is not consumed; returns the
// number of bytes consumed.
size_t append_utf8_lossy(std::string_view bytes, bool final, std::string& out);

// Byte length of the UTF-8 character starting with lead byte `b` (1 for invalid leads).
inline size_t utf8_char_length(unsigned char b) {
  return b < 0xC0 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : b < 0xF8 ? 4 : 1;
}

}  // namespace subq::io
