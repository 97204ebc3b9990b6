// The tiers file parser (--tiers) on arbitrary text: accepted tiers keep the
// documented limits.
#include <cmath>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/tiers.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::vector<matformer::server::Tier>> tiers = matformer::server::ParseTiers(text, "fuzz");
  if (!tiers.ok()) return 0;
  FUZZ_CHECK(tiers->size() <= 32);
  for (const matformer::server::Tier& tier : *tiers) {
    FUZZ_CHECK(!tier.name.empty() && tier.name.size() <= 32);
    FUZZ_CHECK(matformer::server::FindTier(*tiers, tier.name) == &tier);
    FUZZ_CHECK(tier.budget > absl::ZeroDuration() && tier.budget <= absl::Hours(1));
    FUZZ_CHECK(tier.priority >= -100 && tier.priority <= 100);
  }
  return 0;
}
