#ifndef MATFORMER_SERVER_TIERS_H_
#define MATFORMER_SERVER_TIERS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace matformer::server {

// A service tier: requests naming it get its latency budget (unless they set
// their own) and its scheduling priority.
struct Tier {
  std::string name;
  absl::Duration budget;
  int priority = 0;
};

// Parses a tiers file:
//   {"tiers": [{"name": "interactive", "latency_budget_ms": 300, "priority": 2}, ...]}
// Names are unique, [a-z0-9_-]{1,32}, not "none" or "unknown"; budgets in (0, 1 h]; priorities in
// [-100, 100]; at most 32 tiers. `source` names the file in errors.
absl::StatusOr<std::vector<Tier>> ParseTiers(absl::string_view json_text, absl::string_view source);
absl::StatusOr<std::vector<Tier>> LoadTiers(const std::string& path);

// The tier called `name`, or nullptr.
const Tier* FindTier(const std::vector<Tier>& tiers, absl::string_view name);

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_TIERS_H_
