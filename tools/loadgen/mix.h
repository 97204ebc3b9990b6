#ifndef MATFORMER_TOOLS_LOADGEN_MIX_H_
#define MATFORMER_TOOLS_LOADGEN_MIX_H_

// The tier mix of a load test, from a JSON file:
//   {"tiers": [{"name": "interactive", "share": 0.5, "max_new_tokens": 16,
//               "prompt_tokens": [16, 64], "budget_via": "tier"}, ...]}
// "budget_via": "tier" (default) sends the tier name and the server applies
// the tier's budget; "deadline" sends no tier and sets the gRPC deadline to
// "budget_ms" (or, without it, to the server's budget for a tier of that name).

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace matformer::loadgen {

enum class BudgetVia { kTier, kDeadline };

struct TierMix {
  std::string name;
  double share = 0;  // normalized: the shares of a mix sum to 1
  int max_new_tokens = 0;
  int min_prompt_tokens = 0;
  int max_prompt_tokens = 0;
  BudgetVia budget_via = BudgetVia::kTier;
  std::optional<absl::Duration> budget;  // budget_ms, if given
};

struct Mix {
  std::vector<TierMix> tiers;
};

inline constexpr int kMaxNewTokensLimit = 4096;
inline constexpr int kMaxPromptTokensLimit = 100000;

absl::StatusOr<Mix> ParseMix(const std::string& json_text);
absl::StatusOr<Mix> LoadMix(const std::string& path);

}  // namespace matformer::loadgen

#endif  // MATFORMER_TOOLS_LOADGEN_MIX_H_
