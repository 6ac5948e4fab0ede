// Fuzzes the config.json accessor: every field of any JSON object is read as every type
// (and nested objects recursively, to a small depth); errors must be subq::Error.
#include <string>

#include "subq/io.h"

namespace {

void read_all(const subq::Config& c, int depth) {
  for (const std::string& key : c.keys()) {
    auto attempt = [&](auto&& read) {
      try {
        read();
      } catch (const subq::Error&) {
      }
    };
    attempt([&] { c.get<int64_t>(key); });
    attempt([&] { c.get<double>(key); });
    attempt([&] { c.get<bool>(key); });
    attempt([&] { c.get<std::string>(key); });
    attempt([&] { c.get<std::vector<int64_t>>(key); });
    attempt([&] { c.get<std::vector<double>>(key); });
    attempt([&] { c.get<std::vector<std::string>>(key); });
    attempt([&] { c.get_or<int64_t>(key, 0); });
    if (depth < 4) attempt([&] { read_all(c.object(key), depth + 1); });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    read_all(subq::Config::parse(std::string_view(reinterpret_cast<const char*>(data), size), "config.json"), 0);
  } catch (const subq::Error&) {
  }
  return 0;
}
