#include "server/tiers.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "core/util/files.h"

namespace matformer::server {
namespace {

constexpr size_t kMaxTiers = 32;
constexpr size_t kMaxNameLength = 32;
constexpr size_t kMaxFileBytes = 1 << 20;
constexpr double kMaxBudgetMs = 3600e3;
constexpr int kMaxPriority = 100;

// Tier names become metric labels and log fields: keep them plain.
bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::vector<Tier>> ParseTiers(absl::string_view json_text, absl::string_view source) {
  const nlohmann::json json = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object() || !json.contains("tiers") || !json["tiers"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": expected a JSON object with a \"tiers\" array"));
  }
  const nlohmann::json& entries = json["tiers"];
  if (entries.size() > kMaxTiers) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", entries.size(), " tiers, more than ", kMaxTiers));
  }
  std::vector<Tier> tiers;
  for (size_t i = 0; i < entries.size(); ++i) {
    const nlohmann::json& entry = entries[i];
    const std::string where = absl::StrCat(source, ": tiers[", i, "]");
    if (!entry.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": not an object"));
    for (const auto& [key, value] : entry.items()) {
      if (key != "name" && key != "latency_budget_ms" && key != "priority") {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": unknown field \"", key, "\" (expected name, latency_budget_ms, priority)"));
      }
    }
    if (!entry.contains("name") || !entry["name"].is_string() || !ValidName(entry["name"].get<std::string>())) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".name: required, 1 to ", kMaxNameLength, " characters of [a-z0-9_-]"));
    }
    Tier tier;
    tier.name = entry["name"].get<std::string>();
    // The metrics label requests without a tier "none" and with an unknown one "unknown".
    if (tier.name == "none" || tier.name == "unknown") {
      return absl::InvalidArgumentError(absl::StrCat(where, ".name: \"", tier.name, "\" is reserved"));
    }
    if (FindTier(tiers, tier.name) != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".name: \"", tier.name, "\" appears twice"));
    }
    if (!entry.contains("latency_budget_ms") || !entry["latency_budget_ms"].is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".latency_budget_ms: required number"));
    }
    const double budget_ms = entry["latency_budget_ms"].get<double>();
    if (!std::isfinite(budget_ms) || budget_ms <= 0 || budget_ms > kMaxBudgetMs) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".latency_budget_ms = ", budget_ms, " outside (0, ", kMaxBudgetMs, "]"));
    }
    tier.budget = absl::Milliseconds(budget_ms);
    if (entry.contains("priority")) {
      if (!entry["priority"].is_number_integer() || entry["priority"].get<int64_t>() < -kMaxPriority ||
          entry["priority"].get<int64_t>() > kMaxPriority) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".priority: an integer in [", -kMaxPriority, ", ", kMaxPriority, "]"));
      }
      tier.priority = static_cast<int>(entry["priority"].get<int64_t>());
    }
    tiers.push_back(std::move(tier));
  }
  return tiers;
}

absl::StatusOr<std::vector<Tier>> LoadTiers(const std::string& path) {
  // Bounded before reading: --tiers=/dev/zero must fail, not fill memory.
  absl::StatusOr<std::string> text = ReadBoundedFile(path, kMaxFileBytes);
  if (!text.ok()) return absl::Status(text.status().code(), absl::StrCat(path, ": ", text.status().message()));
  return ParseTiers(*text, path);
}

const Tier* FindTier(const std::vector<Tier>& tiers, absl::string_view name) {
  for (const Tier& tier : tiers) {
    if (tier.name == name) return &tier;
  }
  return nullptr;
}

}  // namespace matformer::server
