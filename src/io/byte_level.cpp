#include "src/io/byte_level.h"

#include "src/io/utf8.h"

namespace subq::io {
namespace {

bool printable(int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

std::string utf8_of(char32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {  // the alphabet stays below U+0800
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

struct Alphabet {
  std::array<std::string, 256> chars;
  std::array<int, 0x144> byte_of;  // code point -> byte, -1 outside the alphabet
  Alphabet() {
    byte_of.fill(-1);
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const char32_t cp = printable(b) ? static_cast<char32_t>(b) : next++;
      chars[static_cast<size_t>(b)] = utf8_of(cp);
      byte_of[cp] = b;
    }
  }
};

const Alphabet& alphabet() {
  static const Alphabet a;
  return a;
}

}  // namespace

const std::array<std::string, 256>& byte_level_chars() { return alphabet().chars; }

void append_byte_level(std::string_view bytes, std::string& out) {
  const auto& chars = alphabet().chars;
  for (const char c : bytes) out += chars[static_cast<unsigned char>(c)];
}

std::string byte_level_decode(std::string_view token) {
  const auto& byte_of = alphabet().byte_of;
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(token.data());
  size_t i = 0;
  while (i < token.size()) {
    char32_t cp;
    size_t len = utf8_char_length(p[i]);
    if (len == 1 && p[i] < 0x80) cp = p[i];
    else if (len == 2 && i + 1 < token.size()) cp = (char32_t{p[i]} & 0x1F) << 6 | (char32_t{p[i + 1]} & 0x3F);
    else return std::string(token);  // 3- and 4-byte characters are outside the alphabet
    if (cp >= byte_of.size() || byte_of[cp] < 0) return std::string(token);
    out += static_cast<char>(byte_of[cp]);
    i += len;
  }
  return out;
}

}  // namespace subq::io
