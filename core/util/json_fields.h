#ifndef MATFORMER_CORE_UTIL_JSON_FIELDS_H_
#define MATFORMER_CORE_UTIL_JSON_FIELDS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

// Validated reads of config.json fields, shared by both model families'
// config parsers: every error is InvalidArgument "config.json: <path><field>
// <what is wrong>", and shows the offending value cut short.
namespace matformer {

// A JSON value as it appears in the file, cut to 80 characters so that a huge
// value cannot flood a message.
std::string ShownJson(const nlohmann::json& json);

// Reads the fields of one JSON object; `prefix` is the object's path
// ("text_config.") put before every field name in errors. A null field is a
// missing one.
class JsonFields {
 public:
  using Json = nlohmann::json;

  JsonFields(const Json& object, std::string prefix) : object_(object), prefix_(std::move(prefix)) {}

  absl::Status Error(absl::string_view field, absl::string_view message) const;
  bool Has(absl::string_view field) const;
  absl::StatusOr<const Json*> Get(absl::string_view field) const;
  // An integer in [min, max] (values beyond int64 are out of range, not wrapped).
  absl::StatusOr<int64_t> Int(absl::string_view field, int64_t min, int64_t max) const;
  absl::StatusOr<int64_t> CheckInt(const Json& json, absl::string_view field, int64_t min, int64_t max) const;
  // A number in [min, max] (NaN never is).
  absl::StatusOr<double> Number(absl::string_view field, double min, double max) const;
  absl::StatusOr<double> CheckNumber(const Json& json, absl::string_view field, double min, double max) const;
  absl::StatusOr<bool> Bool(absl::string_view field) const;
  absl::StatusOr<std::string> String(absl::string_view field) const;
  absl::StatusOr<std::string> CheckString(const Json& json, absl::string_view field) const;
  // An array of [min_size, max_size] entries.
  absl::StatusOr<const Json*> Array(absl::string_view field, size_t min_size, size_t max_size) const;

 private:
  const Json& object_;
  std::string prefix_;
};

}  // namespace matformer

#endif  // MATFORMER_CORE_UTIL_JSON_FIELDS_H_
