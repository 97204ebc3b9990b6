#include "server/budget.h"

#include <algorithm>

namespace matformer::server {

absl::string_view BudgetSourceName(BudgetSource source) {
  switch (source) {
    case BudgetSource::kNone:
      return "none";
    case BudgetSource::kRequest:
      return "request";
    case BudgetSource::kTier:
      return "tier";
    case BudgetSource::kDeadline:
      return "deadline";
  }
  return "none";
}

ResolvedBudget ResolveBudget(std::optional<absl::Duration> explicit_budget, const Tier* tier,
                             std::optional<absl::Time> deadline, absl::Time now) {
  if (explicit_budget.has_value()) return {explicit_budget, BudgetSource::kRequest};
  if (tier != nullptr) return {tier->budget, BudgetSource::kTier};
  if (deadline.has_value()) return {std::max(absl::ZeroDuration(), *deadline - now), BudgetSource::kDeadline};
  return {};
}

}  // namespace matformer::server
