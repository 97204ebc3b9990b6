#ifndef MATFORMER_SERVER_AUTH_H_
#define MATFORMER_SERVER_AUTH_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/tiers.h"

namespace matformer::server {

// Who a bearer token belongs to and which tiers it may use.
struct Principal {
  std::string name;
  bool all_tiers = false;
  // Configured tier names, and "none" for requests that set no tier.
  std::vector<std::string> tiers;
};

// Bearer-token authentication (call metadata "authorization: Bearer <token>")
// and per-token tier authorization. The tokens file (--auth_tokens) is a JSON
// object from token to principal:
//   {"<token>": {"name": "alice", "tiers": ["interactive", "none"]},
//    "sha256:<64 hex digits>": {"name": "batch-jobs", "tiers": "*"}}
// A key is the token itself (16 to 1024 visible ASCII characters) or
// "sha256:" and the hex SHA-256 of the token, so the file need not hold the
// secret. Names are 1 to 64 of [A-Za-z0-9_.@-] (they appear in logs); tiers
// are "*" (all) or a list of configured tier names and "none" (no tier).
//
// Only SHA-256 digests are kept. A presented token is hashed and compared
// with every digest with CRYPTO_memcmp, always all of them, and the match is
// selected without a branch: the time taken depends on the number of tokens
// and the presented token's length, not on which token (if any) matched or
// how much of it did.
class TokenAuthenticator {
 public:
  using Digest = std::array<uint8_t, 32>;

  // `source` names the file in errors; `tiers` are the configured tiers.
  static absl::StatusOr<TokenAuthenticator> Parse(absl::string_view json_text, const std::vector<Tier>& tiers,
                                                  absl::string_view source);
  static absl::StatusOr<TokenAuthenticator> Load(const std::string& path, const std::vector<Tier>& tiers);

  // The principal of the call's "authorization" metadata values (none, one,
  // or several); UNAUTHENTICATED when missing, malformed, repeated or unknown.
  absl::StatusOr<const Principal*> Authenticate(const std::vector<absl::string_view>& authorization) const;
  // PERMISSION_DENIED unless `principal` may use `tier` (empty: no tier).
  static absl::Status Authorize(const Principal& principal, absl::string_view tier);

  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    Digest digest;
    Principal principal;
  };
  std::vector<Entry> entries_;
};

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_AUTH_H_
