// Typed access to config.json with errors that name the file and the field.
#include <limits>

#include "src/io/json.h"
#include "subq/io.h"

namespace subq {

using io::Json;

namespace {
std::string describe_field(const std::string& file, const std::string& name) {
  return file + ": field '" + name + "'";
}
}  // namespace

struct Config::Impl {
  std::string path;
  std::string prefix;  // "rope_scaling." inside a nested object
  std::shared_ptr<const Json> root;
  const Json* object = nullptr;

  std::string where(const std::string& field) const { return describe_field(path, prefix + field); }

  // The field's value, or nullptr if it is absent or null.
  const Json* find(const std::string& field) const {
    const auto it = object->find(field);
    return it == object->end() || it->is_null() ? nullptr : &*it;
  }
  const Json& require(const std::string& field) const {
    const Json* j = find(field);
    if (!j) throw Error(where(field) + " missing");
    return *j;
  }
};

namespace {

[[noreturn]] void wrong_type(const std::string& where, const char* want, const Json& found) {
  throw Error(where + " must be " + want + ", found " + io::json_type_name(found));
}

template <class T> struct Read;

template <> struct Read<int64_t> {
  static int64_t from(const Json& j, const std::string& where) {
    if (j.is_number_integer() && !j.is_number_unsigned()) return j.get<int64_t>();
    if (j.is_number_unsigned()) {
      const uint64_t v = j.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw Error(where + " is too large: " + io::json_brief(j));
      return static_cast<int64_t>(v);
    }
    wrong_type(where, "an integer", j);
  }
};
// transformers >= 5 writes non-finite floats as {"__float__": "Infinity"} (JSON has no
// literal for them), e.g. Mamba-2's time_step_limit [0.0, inf].
template <> struct Read<double> {
  static double from(const Json& j, const std::string& where) {
    if (j.is_object() && j.size() == 1 && j.contains("__float__") && j["__float__"].is_string()) {
      const std::string v = j["__float__"].get<std::string>();
      if (v == "Infinity") return std::numeric_limits<double>::infinity();
      if (v == "-Infinity") return -std::numeric_limits<double>::infinity();
      if (v == "NaN") return std::numeric_limits<double>::quiet_NaN();
      throw Error(where + ": unknown encoded float \"" + v + "\"");
    }
    if (!j.is_number()) wrong_type(where, "a number", j);
    return j.get<double>();
  }
};
template <> struct Read<bool> {
  static bool from(const Json& j, const std::string& where) {
    if (!j.is_boolean()) wrong_type(where, "a boolean", j);
    return j.get<bool>();
  }
};
template <> struct Read<std::string> {
  static std::string from(const Json& j, const std::string& where) {
    if (!j.is_string()) wrong_type(where, "a string", j);
    return j.get<std::string>();
  }
};
// Arrays name a bad element as "field 'dims[2]'".
template <class E> struct ReadArray {
  static std::vector<E> from(const Json& j, const std::string& file, const std::string& name) {
    if (!j.is_array()) wrong_type(describe_field(file, name), "an array", j);
    std::vector<E> out;
    out.reserve(j.size());
    for (size_t i = 0; i < j.size(); ++i)
      out.push_back(Read<E>::from(j[i], describe_field(file, name + "[" + std::to_string(i) + "]")));
    return out;
  }
};

template <class T> T read(const Json& j, const std::string& file, const std::string& name) {
  if constexpr (requires { ReadArray<typename T::value_type>::from(j, file, name); } &&
                !std::is_same_v<T, std::string>)
    return ReadArray<typename T::value_type>::from(j, file, name);
  else
    return Read<T>::from(j, describe_field(file, name));
}

}  // namespace

Config Config::load(const std::string& path) { return parse(io::read_text_file(path), path); }

Config Config::parse(std::string_view json_text, const std::string& label) {
  auto root = std::make_shared<const Json>(io::parse_json(json_text, label));
  if (!root->is_object()) throw Error(label + ": must be a JSON object, found " + io::json_type_name(*root));
  auto impl = std::make_shared<Impl>();
  impl->path = label;
  impl->object = root.get();
  impl->root = std::move(root);
  return Config(std::move(impl));
}

const std::string& Config::path() const { return impl_->path; }

bool Config::has(const std::string& field) const { return impl_->find(field) != nullptr; }

template <class T> T Config::get(const std::string& field) const {
  return read<T>(impl_->require(field), impl_->path, impl_->prefix + field);
}

template <class T> T Config::get_or(const std::string& field, T fallback) const {
  const Json* j = impl_->find(field);
  return j ? read<T>(*j, impl_->path, impl_->prefix + field) : fallback;
}

Config Config::object(const std::string& field) const {
  const Json& j = impl_->require(field);
  if (!j.is_object()) wrong_type(impl_->where(field), "an object", j);
  auto impl = std::make_shared<Impl>(*impl_);
  impl->prefix = impl_->prefix + field + ".";
  impl->object = &j;
  return Config(std::move(impl));
}

std::vector<std::string> Config::keys() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : impl_->object->items()) out.push_back(k);
  return out;
}

template int64_t Config::get<int64_t>(const std::string&) const;
template double Config::get<double>(const std::string&) const;
template bool Config::get<bool>(const std::string&) const;
template std::string Config::get<std::string>(const std::string&) const;
template std::vector<int64_t> Config::get<std::vector<int64_t>>(const std::string&) const;
template std::vector<double> Config::get<std::vector<double>>(const std::string&) const;
template std::vector<std::string> Config::get<std::vector<std::string>>(const std::string&) const;
template int64_t Config::get_or<int64_t>(const std::string&, int64_t) const;
template double Config::get_or<double>(const std::string&, double) const;
template bool Config::get_or<bool>(const std::string&, bool) const;
template std::string Config::get_or<std::string>(const std::string&, std::string) const;
template std::vector<int64_t> Config::get_or<std::vector<int64_t>>(const std::string&, std::vector<int64_t>) const;
template std::vector<double> Config::get_or<std::vector<double>>(const std::string&, std::vector<double>) const;
template std::vector<std::string> Config::get_or<std::vector<std::string>>(const std::string&,
                                                                           std::vector<std::string>) const;

}  // namespace subq
