// The bearer tokens file (--auth_tokens) and the authorization metadata, on
// arbitrary text: the first line is presented as the call's "authorization"
// value, the rest is the tokens file. A token the file accepted must then
// authenticate as written ("Bearer <token>").
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "server/auth.h"
#include "server/tiers.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const std::vector<matformer::server::Tier>& Tiers() {
  static const auto* const tiers = new std::vector<matformer::server::Tier>{{"interactive", absl::Milliseconds(300), 2},
                                                                            {"batch", absl::Seconds(10), 0}};
  return *tiers;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t newline = input.find('\n');
  const absl::string_view header = input.substr(0, newline);
  const absl::string_view file = newline == absl::string_view::npos ? "" : input.substr(newline + 1);
  absl::StatusOr<matformer::server::TokenAuthenticator> auth =
      matformer::server::TokenAuthenticator::Parse(file, Tiers(), "fuzz");
  if (!auth.ok()) return 0;
  FUZZ_CHECK(auth->size() > 0);
  absl::StatusOr<const matformer::server::Principal*> principal = auth->Authenticate({header});
  if (principal.ok()) {
    FUZZ_CHECK(*principal != nullptr && !(*principal)->name.empty());
    (void)matformer::server::TokenAuthenticator::Authorize(**principal, "interactive");
    (void)matformer::server::TokenAuthenticator::Authorize(**principal, "");
  }
  // Every plain-token key authenticates.
  // Parsed the way the authenticator parses it (ordered: duplicate keys resolve alike).
  const nlohmann::ordered_json json = nlohmann::ordered_json::parse(file.begin(), file.end(), nullptr, false);
  FUZZ_CHECK(json.is_object());
  for (const auto& [key, value] : json.items()) {
    if (key.rfind("sha256:", 0) == 0) continue;
    const std::string bearer = "Bearer " + key;
    absl::StatusOr<const matformer::server::Principal*> found = auth->Authenticate({bearer});
    FUZZ_CHECK(found.ok());
    FUZZ_CHECK((*found)->name == value["name"].get<std::string>());
  }
  return 0;
}
