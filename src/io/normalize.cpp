#include "src/io/normalize.h"

#include <cstdint>

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>

#include "subq/tensor.h"

namespace subq::io {

std::string normalize_nfc(std::string_view text) {
  if (text.size() > static_cast<size_t>(INT32_MAX)) throw Error("NFC normalization: text of 2 GiB or more");
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) throw Error(std::string("cannot load ICU's NFC data: ") + u_errorName(status));
  std::string out;
  out.reserve(text.size());
  icu::StringByteSink<std::string> sink(&out);
  nfc->normalizeUTF8(0, icu::StringPiece(text.data(), static_cast<int32_t>(text.size())), sink, nullptr, status);
  if (U_FAILURE(status)) throw Error(std::string("NFC normalization failed: ") + u_errorName(status));
  return out;
}

}  // namespace subq::io
