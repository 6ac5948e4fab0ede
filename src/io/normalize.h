// Unicode normalization for tokenizer.json normalizers.
#pragma once

#include <string>
#include <string_view>

namespace subq::io {

// NFC of valid UTF-8 text.
std::string normalize_nfc(std::string_view text);

}  // namespace subq::io
