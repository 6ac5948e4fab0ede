#include "src/io/json.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "subq/tensor.h"

namespace subq::io {

Json parse_json(std::string_view text, const std::string& label) {
  // One set of keys per open object; the callback sees keys in document order.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  const Json::parser_callback_t check_keys = [&](int, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!open_objects.empty() && !open_objects.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default:
        break;
    }
    return true;
  };
  Json j;
  try {
    j = Json::parse(text.begin(), text.end(), check_keys);
  } catch (const Json::exception& e) {
    throw Error(label + ": invalid JSON: " + e.what());
  }
  if (!duplicate.empty()) throw Error(label + ": invalid JSON: key '" + duplicate + "' appears twice in one object");
  return j;
}

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error(path + ": cannot read: not an existing regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  return s.str();
}

const char* json_type_name(const Json& j) {
  switch (j.type()) {
    case Json::value_t::string: return "string";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "integer";
    case Json::value_t::number_float: return "number";
    case Json::value_t::boolean: return "boolean";
    case Json::value_t::array: return "array";
    case Json::value_t::object: return "object";
    case Json::value_t::null: return "null";
    default: return "binary";
  }
}

std::string json_brief(const Json& j) {
  if (j.is_array() || j.is_object()) return std::string("an ") + json_type_name(j);
  if (j.is_string() && j.get_ref<const std::string&>().size() > 64)
    return Json(j.get_ref<const std::string&>().substr(0, 64)).dump(-1, ' ', false, Json::error_handler_t::replace) + "...";
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace subq::io
