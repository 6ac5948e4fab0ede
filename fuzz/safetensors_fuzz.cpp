// Fuzzes the safetensors parser: any input either parses into tensors whose every byte
// can be read, or throws subq::Error.
#include <cstring>

#include "subq/io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto storage = subq::Storage::allocate(size);
  if (size) std::memcpy(storage->data(), data, size);
  try {
    const subq::SafetensorsFile f = subq::SafetensorsFile::parse(storage, "fuzz.safetensors");
    unsigned sum = 0;
    for (const std::string& name : f.names()) {
      const subq::Tensor t = f.get(name);
      const auto* bytes = static_cast<const unsigned char*>(t.raw_data());
      for (size_t i = 0; i < t.nbytes(); ++i) sum += bytes[i];
    }
    for (const auto& [k, v] : f.metadata()) sum += static_cast<unsigned>(k.size() + v.size());
    volatile unsigned sink = sum;
    (void)sink;
  } catch (const subq::Error&) {
  }
  return 0;
}
