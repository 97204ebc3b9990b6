#ifndef MATFORMER_SERVER_BUDGET_H_
#define MATFORMER_SERVER_BUDGET_H_

#include <optional>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/tiers.h"

namespace matformer::server {

enum class BudgetSource { kNone, kRequest, kTier, kDeadline };
absl::string_view BudgetSourceName(BudgetSource source);

struct ResolvedBudget {
  std::optional<absl::Duration> budget;  // what the planner fits the submodel into
  BudgetSource source = BudgetSource::kNone;
};

// The one rule for a request's latency budget: the request's own budget,
// else its tier's, else the time left until the call's deadline, else none
// (the planner then picks the best quality). `explicit_budget` is validated
// (non-negative) by the caller.
ResolvedBudget ResolveBudget(std::optional<absl::Duration> explicit_budget, const Tier* tier,
                             std::optional<absl::Time> deadline, absl::Time now);

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_BUDGET_H_
