// Fuzzes the tokenizer three ways with one input: as a tokenizer.json to load (and, if it
// loads, to encode and decode a fixed text); as text for the two fixture tokenizers to
// encode (invalid UTF-8 must be an Error), checking that decoding gives the text back;
// and as a stream of token ids to decode, checking the streaming decoder against decode.
#include <cstring>
#include <vector>

#include "subq/io.h"

namespace {

const std::vector<subq::Tokenizer>& fixtures() {
  static const std::vector<subq::Tokenizer> t = {
      subq::Tokenizer::load(SUBQ_FUZZ_DATA "/tokenizer_neox.json"),
      subq::Tokenizer::load(SUBQ_FUZZ_DATA "/tokenizer_llama3.json"),
  };
  return t;
}

void exercise(const subq::Tokenizer& tok, std::string_view text, const std::vector<int32_t>& ids, bool lossless) {
  try {
    const std::vector<int32_t> encoded = tok.encode(text, true);
    const std::string decoded = tok.decode(encoded, true);
    // The fixtures cover all 256 bytes, so byte-level BPE loses nothing; NFC may change
    // non-ASCII text and special tokens are skipped, so compare plain ASCII only.
    bool ascii = true;
    for (const char c : text) ascii &= static_cast<unsigned char>(c) < 0x80;
    if (lossless && ascii && decoded != text && text.find("<|") == std::string_view::npos) __builtin_trap();
  } catch (const subq::Error&) {
  }
  subq::TokenDecoder stream(tok);
  std::string streamed;
  for (const int32_t id : ids) streamed += stream.push(id);
  streamed += stream.finish();
  if (streamed != tok.decode(ids)) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<int32_t> ids(size / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
  for (const subq::Tokenizer& tok : fixtures()) exercise(tok, text, ids, true);
  try {
    const subq::Tokenizer tok = subq::Tokenizer::parse(text, "fuzz.json");
    exercise(tok, "Hello, w\xc3\xb6rld! 123 <|endoftext|>  \n\t東京 😀", ids, false);
  } catch (const subq::Error&) {
  }
  return 0;
}
