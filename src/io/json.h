// JSON parsing shared by the file readers: strict (duplicate keys are an error, since a
// hostile file could otherwise show one value to us and another to other readers) and
// with messages that start with the file's label.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace subq::io {

using Json = nlohmann::json;

// Parses `text` or throws Error "<label>: invalid JSON: ...".
Json parse_json(std::string_view text, const std::string& label);

// Reads a whole (small) file or throws Error naming it.
std::string read_text_file(const std::string& path);

// "string", "integer", "number", "boolean", "array", "object", "null".
const char* json_type_name(const Json& j);

// A value for an error message: scalars as JSON (long strings cut), containers by type
// name only — dumping a hostile, deeply nested value would recurse without bound.
std::string json_brief(const Json& j);

// How deep Sequence-style components (normalizers, pre-tokenizers, processors) may nest.
inline constexpr int kMaxComponentDepth = 8;

}  // namespace subq::io
