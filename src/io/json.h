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

}  // namespace subq::io
