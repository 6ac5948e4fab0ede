#include "src/io/utf8.h"

namespace subq::io {
namespace {

enum class Seq { valid, invalid, incomplete };

// Classifies the sequence at p[0..n): `len` is its length if valid, or the length of the
// maximal subpart to replace if invalid (Unicode's "substitution of maximal subparts").
Seq classify(const unsigned char* p, size_t n, size_t& len) {
  const unsigned char b = p[0];
  if (b < 0x80) {
    len = 1;
    return Seq::valid;
  }
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b >= 0xC2 && b <= 0xDF) need = 2;
  else if (b == 0xE0) need = 3, lo = 0xA0;
  else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) need = 3;
  else if (b == 0xED) need = 3, hi = 0x9F;
  else if (b == 0xF0) need = 4, lo = 0x90;
  else if (b >= 0xF1 && b <= 0xF3) need = 4;
  else if (b == 0xF4) need = 4, hi = 0x8F;
  else {
    len = 1;
    return Seq::invalid;
  }
  for (size_t i = 1; i < need; ++i) {
    if (i >= n) {
      len = i;
      return Seq::incomplete;
    }
    const unsigned char c = p[i];
    const bool ok = i == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) {
      len = i;
      return Seq::invalid;
    }
  }
  len = need;
  return Seq::valid;
}

}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    if (classify(p + i, s.size() - i, len) != Seq::valid) return i;
    i += len;
  }
  return std::string_view::npos;
}

size_t append_utf8_lossy(std::string_view bytes, bool final, std::string& out) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t i = 0;
  while (i < bytes.size()) {
    size_t len;
    switch (classify(p + i, bytes.size() - i, len)) {
      case Seq::valid:
        out.append(bytes.data() + i, len);
        break;
      case Seq::invalid:
        out += kReplacement;
        break;
      case Seq::incomplete:
        if (!final) return i;
        out += kReplacement;
        break;
    }
    i += len;
  }
  return i;
}

}  // namespace subq::io
