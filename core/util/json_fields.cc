#include "core/util/json_fields.h"

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace matformer {

std::string ShownJson(const nlohmann::json& json) {
  constexpr size_t kMaxShown = 80;
  std::string text = json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > kMaxShown) text = absl::StrCat(text.substr(0, kMaxShown), "...");
  return text;
}

absl::Status JsonFields::Error(absl::string_view field, absl::string_view message) const {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", prefix_, field, " ", message));
}

bool JsonFields::Has(absl::string_view field) const {
  auto it = object_.find(std::string(field));
  return it != object_.end() && !it->is_null();
}

absl::StatusOr<const JsonFields::Json*> JsonFields::Get(absl::string_view field) const {
  auto it = object_.find(std::string(field));
  if (it == object_.end() || it->is_null()) return Error(field, "is missing");
  return &*it;
}

absl::StatusOr<int64_t> JsonFields::Int(absl::string_view field, int64_t min, int64_t max) const {
  MF_ASSIGN_OR_RETURN(const Json* json, Get(field));
  return CheckInt(*json, field, min, max);
}

absl::StatusOr<int64_t> JsonFields::CheckInt(const Json& json, absl::string_view field, int64_t min,
                                             int64_t max) const {
  if (!json.is_number_integer()) {
    return Error(field, absl::StrCat("must be an integer, got ", json.type_name(), " ", ShownJson(json)));
  }
  // The parser stores every non-negative integer as unsigned; values above
  // INT64_MAX would wrap in get<int64_t>().
  const bool in_range = json.is_number_unsigned() ? json.get<uint64_t>() <= static_cast<uint64_t>(max) &&
                                                        static_cast<int64_t>(json.get<uint64_t>()) >= min
                                                  : json.get<int64_t>() >= min && json.get<int64_t>() <= max;
  if (!in_range) return Error(field, absl::StrCat("= ", ShownJson(json), " is outside [", min, ", ", max, "]"));
  return json.get<int64_t>();
}

absl::StatusOr<double> JsonFields::Number(absl::string_view field, double min, double max) const {
  MF_ASSIGN_OR_RETURN(const Json* json, Get(field));
  return CheckNumber(*json, field, min, max);
}

absl::StatusOr<double> JsonFields::CheckNumber(const Json& json, absl::string_view field, double min,
                                               double max) const {
  if (!json.is_number()) {
    return Error(field, absl::StrCat("must be a number, got ", json.type_name(), " ", ShownJson(json)));
  }
  const double value = json.get<double>();
  if (!(value >= min && value <= max)) {
    return Error(field, absl::StrCat("= ", ShownJson(json), " is outside [", min, ", ", max, "]"));
  }
  return value;
}

absl::StatusOr<bool> JsonFields::Bool(absl::string_view field) const {
  MF_ASSIGN_OR_RETURN(const Json* json, Get(field));
  if (!json->is_boolean()) {
    return Error(field, absl::StrCat("must be a boolean (true or false), got ", ShownJson(*json)));
  }
  return json->get<bool>();
}

absl::StatusOr<std::string> JsonFields::String(absl::string_view field) const {
  MF_ASSIGN_OR_RETURN(const Json* json, Get(field));
  return CheckString(*json, field);
}

absl::StatusOr<std::string> JsonFields::CheckString(const Json& json, absl::string_view field) const {
  if (!json.is_string()) {
    return Error(field, absl::StrCat("must be a string, got ", json.type_name(), " ", ShownJson(json)));
  }
  return json.get<std::string>();
}

absl::StatusOr<const JsonFields::Json*> JsonFields::Array(absl::string_view field, size_t min_size,
                                                          size_t max_size) const {
  MF_ASSIGN_OR_RETURN(const Json* json, Get(field));
  const bool fits = json->is_array() && json->size() >= min_size && json->size() <= max_size;
  if (fits) return json;
  if (min_size == max_size) {
    return Error(field, absl::StrCat("must be an array of ", min_size, " entries, got ", ShownJson(*json)));
  }
  if (!json->is_array()) return Error(field, absl::StrCat("must be an array, got ", json->type_name()));
  return Error(field, absl::StrCat("has ", json->size(), " entries, expected ", min_size, "..", max_size));
}

}  // namespace matformer
