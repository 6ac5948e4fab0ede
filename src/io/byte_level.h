// GPT-2's byte-level alphabet: each byte is shown as a printable character, so that BPE
// runs on strings while covering arbitrary bytes. Printable Latin-1 bytes map to
// themselves; the other 68 bytes map, in byte order, to U+0100..U+0143.
#pragma once

#include <array>
#include <string>
#include <string_view>

namespace subq::io {

// The UTF-8 encoding of the character that stands for each byte.
const std::array<std::string, 256>& byte_level_chars();

// Appends the byte-level characters of `bytes` to `out`.
void append_byte_level(std::string_view bytes, std::string& out);

// The bytes a token string stands for: each character mapped back through the alphabet,
// or, if any character is outside it (added tokens such as "  "), the token's own UTF-8
// bytes — the rule of the ByteLevel decoder of `tokenizers`.
std::string byte_level_decode(std::string_view token);

}  // namespace subq::io
