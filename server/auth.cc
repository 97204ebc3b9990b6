#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "core/util/files.h"

namespace matformer::server {
namespace {

// Ordered: errors number the tokens as they appear in the file.
using Json = nlohmann::ordered_json;

constexpr size_t kMaxFileBytes = 1 << 20;
constexpr size_t kMaxTokens = 10000;
constexpr size_t kMinTokenLength = 16;
constexpr size_t kMaxTokenLength = 1024;
constexpr size_t kMaxNameLength = 64;
constexpr absl::string_view kDigestPrefix = "sha256:";
constexpr absl::string_view kNoTier = "none";
constexpr absl::string_view kBearer = "bearer";

TokenAuthenticator::Digest Sha256(absl::string_view text) {
  TokenAuthenticator::Digest digest{};
  unsigned int length = 0;
  EVP_Digest(text.data(), text.size(), digest.data(), &length, EVP_sha256(), nullptr);
  return digest;
}

// Visible ASCII only: the token travels in an HTTP/2 header.
bool ValidToken(absl::string_view token) {
  if (token.size() < kMinTokenLength || token.size() > kMaxTokenLength) return false;
  return std::all_of(token.begin(), token.end(), [](char c) { return c > 0x20 && c < 0x7F; });
}

bool ValidName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '@' || c == '-';
  });
}

// A key of the file: the token, or "sha256:<hex>" of it.
std::optional<TokenAuthenticator::Digest> KeyDigest(absl::string_view key) {
  if (absl::StartsWith(key, kDigestPrefix)) {
    const absl::string_view hex = key.substr(kDigestPrefix.size());
    if (hex.size() != 64 || !std::all_of(hex.begin(), hex.end(),
                                         [](char c) { return absl::ascii_isxdigit(static_cast<unsigned char>(c)); })) {
      return std::nullopt;
    }
    const std::string bytes = absl::HexStringToBytes(hex);
    TokenAuthenticator::Digest digest;
    std::copy(bytes.begin(), bytes.end(), digest.begin());
    return digest;
  }
  if (!ValidToken(key)) return std::nullopt;
  return Sha256(key);
}

absl::Status Error(absl::string_view source, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", message));
}

}  // namespace

absl::StatusOr<TokenAuthenticator> TokenAuthenticator::Parse(absl::string_view json_text,
                                                             const std::vector<Tier>& tiers, absl::string_view source) {
  const Json json = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return Error(source, "expected a JSON object from token to {\"name\", \"tiers\"}");
  }
  if (json.empty()) return Error(source, "no tokens (every request would be refused)");
  if (json.size() > kMaxTokens) return Error(source, absl::StrCat(json.size(), " tokens, more than ", kMaxTokens));
  TokenAuthenticator result;
  size_t index = 0;
  for (const auto& [key, value] : json.items()) {
    // Never echo a token: entries are named by position (and name, once known).
    const std::string where = absl::StrCat("token #", ++index);
    const std::optional<Digest> digest = KeyDigest(key);
    if (!digest.has_value()) {
      return Error(source, absl::StrCat(where, ": a token must be ", kMinTokenLength, " to ", kMaxTokenLength,
                                        " visible ASCII characters, or \"sha256:\" and 64 hex digits"));
    }
    if (!value.is_object()) return Error(source, absl::StrCat(where, ": expected {\"name\", \"tiers\"}"));
    for (const auto& [field, unused] : value.items()) {
      if (field != "name" && field != "tiers") {
        return Error(source,
                     absl::StrCat(where, ": unknown field \"", absl::CEscape(field), "\" (expected name, tiers)"));
      }
    }
    Entry entry;
    entry.digest = *digest;
    if (!value.contains("name") || !value["name"].is_string() || !ValidName(value["name"].get<std::string>())) {
      return Error(source,
                   absl::StrCat(where, ".name: required, 1 to ", kMaxNameLength, " characters of [A-Za-z0-9_.@-]"));
    }
    entry.principal.name = value["name"].get<std::string>();
    const std::string named = absl::StrCat(where, " (", entry.principal.name, ")");
    const Json* allowed = value.contains("tiers") ? &value["tiers"] : nullptr;
    if (allowed != nullptr && allowed->is_string() && allowed->get<std::string>() == "*") {
      entry.principal.all_tiers = true;
    } else if (allowed != nullptr && allowed->is_array()) {
      for (const Json& tier : *allowed) {
        const std::string name = tier.is_string() ? tier.get<std::string>() : "";
        if (name != kNoTier && FindTier(tiers, name) == nullptr) {
          std::vector<std::string> known = {std::string(kNoTier)};
          for (const Tier& t : tiers) known.push_back(t.name);
          const std::string shown =
              tier.is_string() ? absl::StrCat("\"", absl::CEscape(name), "\"") : tier.dump().substr(0, 32);
          return Error(source, absl::StrCat(named, ".tiers: ", shown, " is not a configured tier (",
                                            absl::StrJoin(known, ", "), ")"));
        }
        entry.principal.tiers.push_back(name);
      }
    } else {
      return Error(source, absl::StrCat(named, ".tiers: required, \"*\" or a list of tier names"));
    }
    for (const Entry& other : result.entries_) {
      if (other.digest == entry.digest) {
        return Error(source, absl::StrCat(named, ": the same token as \"", other.principal.name, "\""));
      }
    }
    result.entries_.push_back(std::move(entry));
  }
  return result;
}

absl::StatusOr<TokenAuthenticator> TokenAuthenticator::Load(const std::string& path, const std::vector<Tier>& tiers) {
  absl::StatusOr<std::string> text = ReadBoundedFile(path, kMaxFileBytes);
  if (!text.ok()) return Error(path, text.status().message());
  return Parse(*text, tiers, path);
}

absl::StatusOr<const Principal*> TokenAuthenticator::Authenticate(
    const std::vector<absl::string_view>& authorization) const {
  if (authorization.empty()) {
    return absl::UnauthenticatedError("missing bearer token (call metadata \"authorization: Bearer <token>\")");
  }
  if (authorization.size() > 1) return absl::UnauthenticatedError("more than one authorization metadata entry");
  absl::string_view value = authorization.front();
  // RFC 6750: the scheme is case-insensitive, followed by one or more spaces.
  if (value.size() <= kBearer.size() || !absl::EqualsIgnoreCase(value.substr(0, kBearer.size()), kBearer) ||
      value[kBearer.size()] != ' ') {
    return absl::UnauthenticatedError("authorization metadata is not \"Bearer <token>\"");
  }
  value.remove_prefix(kBearer.size());
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);

  const Digest digest = Sha256(value);
  uintptr_t found = 0;
  for (const Entry& entry : entries_) {
    // All entries are compared; the mask selects the match without a branch.
    const uintptr_t match = CRYPTO_memcmp(digest.data(), entry.digest.data(), digest.size()) == 0;
    found |= (uintptr_t{0} - match) & reinterpret_cast<uintptr_t>(&entry.principal);
  }
  if (found == 0) return absl::UnauthenticatedError("unknown bearer token");
  return reinterpret_cast<const Principal*>(found);
}

absl::Status TokenAuthenticator::Authorize(const Principal& principal, absl::string_view tier) {
  if (principal.all_tiers) return absl::OkStatus();
  const absl::string_view wanted = tier.empty() ? kNoTier : tier;
  for (const std::string& allowed : principal.tiers) {
    if (allowed == wanted) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "token \"", principal.name, "\" may not use ",
      tier.empty() ? "requests without a tier"
                   : absl::StrCat("tier \"", absl::CEscape(tier.substr(0, 64)), tier.size() > 64 ? "...\"" : "\""),
      " (allowed: ", principal.tiers.empty() ? "nothing" : absl::StrJoin(principal.tiers, ", "), ")"));
}

}  // namespace matformer::server
