#include "tools/loadgen/mix.h"

#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace matformer::loadgen {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(const std::string& where, const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", message));
}

absl::StatusOr<int> IntField(const Json& object, const std::string& where, const char* key, int lo, int hi) {
  const Json& value = object.at(key);
  if (!value.is_number_integer() || value.get<int64_t>() < lo || value.get<int64_t>() > hi) {
    return FieldError(absl::StrCat(where, ".", key), absl::StrCat("must be an integer in [", lo, ", ", hi, "]"));
  }
  return value.get<int>();
}

absl::StatusOr<TierMix> ParseTier(const Json& object, const std::string& where) {
  static const std::set<std::string> kKeys = {"name",          "share",      "max_new_tokens",
                                              "prompt_tokens", "budget_via", "budget_ms"};
  if (!object.is_object()) return FieldError(where, "must be an object");
  for (const auto& [key, value] : object.items()) {
    if (!kKeys.contains(key)) return FieldError(absl::StrCat(where, ".", key), "unknown field");
  }
  for (const char* key : {"name", "share", "max_new_tokens", "prompt_tokens"}) {
    if (!object.contains(key)) return FieldError(absl::StrCat(where, ".", key), "missing");
  }
  TierMix tier;
  if (!object["name"].is_string() || object["name"].get<std::string>().empty()) {
    return FieldError(where + ".name", "must be a non-empty string");
  }
  tier.name = object["name"].get<std::string>();
  const std::string at = absl::StrCat(where, " (", tier.name, ")");
  if (!object["share"].is_number() || !(object["share"].get<double>() > 0) || object["share"].get<double>() > 1e6) {
    return FieldError(at + ".share", "must be a number in (0, 1e6]");
  }
  tier.share = object["share"].get<double>();
  absl::StatusOr<int> max_new = IntField(object, at, "max_new_tokens", 1, kMaxNewTokensLimit);
  if (!max_new.ok()) return max_new.status();
  tier.max_new_tokens = *max_new;
  const Json& prompt = object["prompt_tokens"];
  if (!prompt.is_array() || prompt.size() != 2 || !prompt[0].is_number_integer() ||
      !prompt[1].is_number_integer() || prompt[0].get<int64_t>() < 1 ||
      prompt[0].get<int64_t>() > prompt[1].get<int64_t>() || prompt[1].get<int64_t>() > kMaxPromptTokensLimit) {
    return FieldError(at + ".prompt_tokens",
                      absl::StrCat("must be [min, max] with 1 <= min <= max <= ", kMaxPromptTokensLimit));
  }
  tier.min_prompt_tokens = prompt[0].get<int>();
  tier.max_prompt_tokens = prompt[1].get<int>();
  if (object.contains("budget_via")) {
    const Json& via = object["budget_via"];
    if (via == "tier") {
      tier.budget_via = BudgetVia::kTier;
    } else if (via == "deadline") {
      tier.budget_via = BudgetVia::kDeadline;
    } else {
      return FieldError(at + ".budget_via", "must be \"tier\" or \"deadline\"");
    }
  }
  if (object.contains("budget_ms")) {
    const Json& ms = object["budget_ms"];
    if (!ms.is_number() || !(ms.get<double>() > 0) || ms.get<double>() > 3.6e6) {
      return FieldError(at + ".budget_ms", "must be a number in (0, 3600000]");
    }
    tier.budget = absl::Milliseconds(ms.get<double>());
  }
  return tier;
}

}  // namespace

absl::StatusOr<Mix> ParseMix(const std::string& json_text) {
  const Json root = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError("mix: not valid JSON");
  if (!root.is_object() || !root.contains("tiers") || !root["tiers"].is_array() || root["tiers"].empty()) {
    return absl::InvalidArgumentError("mix: must be an object with a non-empty \"tiers\" array");
  }
  for (const auto& [key, value] : root.items()) {
    if (key != "tiers") return FieldError(absl::StrCat("mix.", key), "unknown field");
  }
  Mix mix;
  double total_share = 0;
  std::set<std::string> names;
  for (size_t i = 0; i < root["tiers"].size(); ++i) {
    absl::StatusOr<TierMix> tier = ParseTier(root["tiers"][i], absl::StrCat("mix.tiers[", i, "]"));
    if (!tier.ok()) return tier.status();
    if (!names.insert(tier->name).second) {
      return FieldError(absl::StrCat("mix.tiers[", i, "].name"), absl::StrCat("duplicate tier '", tier->name, "'"));
    }
    total_share += tier->share;
    mix.tiers.push_back(*std::move(tier));
  }
  for (TierMix& tier : mix.tiers) tier.share /= total_share;
  return mix;
}

absl::StatusOr<Mix> LoadMix(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat("--mix=", path, ": cannot open"));
  std::stringstream text;
  text << file.rdbuf();
  absl::StatusOr<Mix> mix = ParseMix(text.str());
  if (!mix.ok()) return absl::Status(mix.status().code(), absl::StrCat("--mix=", path, ": ", mix.status().message()));
  return mix;
}

}  // namespace matformer::loadgen
