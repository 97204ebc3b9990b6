// Bearer tokens (server/auth.cc) and bounded file reads (server/files.cc).
// The end-to-end behaviour over gRPC is in tests/integration/security_test.cc.
#include <openssl/evp.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/auth.h"
#include "core/util/files.h"
#include "server/tiers.h"

namespace matformer::server {
namespace {

const std::vector<Tier> kTiers = {{"interactive", absl::Milliseconds(300), 2}, {"batch", absl::Seconds(10), 0}};

std::string Sha256Hex(const std::string& text) {
  unsigned char digest[32];
  unsigned int length = 0;
  EVP_Digest(text.data(), text.size(), digest, &length, EVP_sha256(), nullptr);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), length));
}

TokenAuthenticator Parsed(const std::string& json) {
  absl::StatusOr<TokenAuthenticator> auth = TokenAuthenticator::Parse(json, kTiers, "tokens.json");
  EXPECT_TRUE(auth.ok()) << auth.status();
  return auth.ok() ? *std::move(auth) : TokenAuthenticator();
}

TEST(TokenAuthenticator, FindsEachTokenAndOnlyExactMatches) {
  const TokenAuthenticator auth =
      Parsed(absl::StrCat(R"({"alice-token-0123456789": {"name": "alice", "tiers": ["interactive", "none"]},
                              "sha256:)",
                          Sha256Hex("hashed-token-0123456789"), R"(": {"name": "hashed", "tiers": "*"}})"));
  ASSERT_EQ(auth.size(), 2u);
  auto name = [&](const std::string& header) -> std::string {
    absl::StatusOr<const Principal*> principal = auth.Authenticate({header});
    return principal.ok() ? (*principal)->name : std::string(absl::StatusCodeToString(principal.status().code()));
  };
  EXPECT_EQ(name("Bearer alice-token-0123456789"), "alice");
  EXPECT_EQ(name("bEaReR   alice-token-0123456789"), "alice");
  EXPECT_EQ(name("Bearer hashed-token-0123456789"), "hashed");
  for (const std::string& bad : std::vector<std::string>{
           "", "Bearer", "Bearer ", "Bearer alice-token-012345678", "Bearer alice-token-01234567890",
           "Bearer Alice-token-0123456789", "alice-token-0123456789", "Basic alice-token-0123456789",
           "Bearer\talice-token-0123456789", std::string("Bearer sha256:") + Sha256Hex("hashed-token-0123456789")}) {
    EXPECT_EQ(name(bad), "UNAUTHENTICATED") << "'" << bad << "'";
  }
  EXPECT_EQ(auth.Authenticate({}).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.Authenticate({"Bearer alice-token-0123456789", "Bearer alice-token-0123456789"}).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(TokenAuthenticator, TiersAreAllowedPerToken) {
  const Principal alice{.name = "alice", .all_tiers = false, .tiers = {"interactive", "none"}};
  const Principal ops{.name = "ops", .all_tiers = true, .tiers = {}};
  EXPECT_TRUE(TokenAuthenticator::Authorize(alice, "interactive").ok());
  EXPECT_TRUE(TokenAuthenticator::Authorize(alice, "").ok());
  const absl::Status denied = TokenAuthenticator::Authorize(alice, "batch");
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.message(), "token \"alice\" may not use tier \"batch\" (allowed: interactive, none)");
  EXPECT_EQ(TokenAuthenticator::Authorize(Principal{.name = "b", .all_tiers = false, .tiers = {"batch"}}, "").message(),
            "token \"b\" may not use requests without a tier (allowed: batch)");
  // A client's tier string is quoted cut short.
  const absl::Status long_tier = TokenAuthenticator::Authorize(alice, std::string(100000, 'x'));
  EXPECT_LT(long_tier.message().size(), 200u);
  EXPECT_TRUE(TokenAuthenticator::Authorize(ops, "batch").ok());
  EXPECT_TRUE(TokenAuthenticator::Authorize(ops, "").ok());
}

TEST(TokenAuthenticator, BadFilesAreRejectedNamingTheEntry) {
  struct Case {
    std::string json;
    std::string expected;
  };
  const std::string token = "a-long-enough-token-1";
  const std::vector<Case> cases = {
      {"", "expected a JSON object"},
      {"[]", "expected a JSON object"},
      {"{}", "no tokens"},
      {R"({"short": {"name": "a", "tiers": "*"}})", "token #1: a token must be 16 to 1024"},
      {R"({"has a space in it!!": {"name": "a", "tiers": "*"}})", "token #1: a token must be"},
      {R"({"sha256:1234": {"name": "a", "tiers": "*"}})", "token #1: a token must be"},
      {R"({"a-long-enough-token-1": "alice"})", "token #1: expected {\"name\", \"tiers\"}"},
      {R"({"a-long-enough-token-1": {"tiers": "*"}})", "token #1.name: required"},
      {R"({"a-long-enough-token-1": {"name": "a/b", "tiers": "*"}})", "token #1.name"},
      {R"({"a-long-enough-token-1": {"name": "a"}})", "token #1 (a).tiers: required"},
      {R"({"a-long-enough-token-1": {"name": "a", "tiers": "all"}})", "token #1 (a).tiers: required"},
      {R"({"a-long-enough-token-1": {"name": "a", "tiers": ["gold"]}})",
       "token #1 (a).tiers: \"gold\" is not a configured tier (none, interactive, batch)"},
      {R"({"a-long-enough-token-1": {"name": "a", "tiers": [7]}})", "token #1 (a).tiers: 7 is not"},
      {R"({"a-long-enough-token-1": {"name": "a", "tiers": "*", "admin": true}})", "unknown field \"admin\""},
      {absl::StrCat(R"({"a-long-enough-token-1": {"name": "a", "tiers": "*"}, "sha256:)", Sha256Hex(token),
                    R"(": {"name": "b", "tiers": "*"}})"),
       "token #2 (b): the same token as \"a\""},
  };
  for (const Case& c : cases) {
    absl::StatusOr<TokenAuthenticator> auth = TokenAuthenticator::Parse(c.json, kTiers, "tokens.json");
    ASSERT_FALSE(auth.ok()) << c.json;
    EXPECT_EQ(auth.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StartsWith(auth.status().message(), "tokens.json: ")) << auth.status();
    EXPECT_TRUE(absl::StrContains(auth.status().message(), c.expected)) << c.expected << " / " << auth.status();
    // Never echo a token.
    EXPECT_FALSE(absl::StrContains(auth.status().message(), token)) << auth.status();
  }
}

class ReadBoundedFileTest : public testing::Test {
 protected:
  void SetUp() override { dir_ = testing::TempDir() + "/read_bounded_" + std::to_string(getpid()); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    std::filesystem::create_directories(dir_);
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
  std::string dir_;
};

TEST_F(ReadBoundedFileTest, ReadsUpToTheBoundAndNoFurther) {
  EXPECT_EQ(ReadBoundedFile(Write("ok", "12345"), 5).value_or("?"), "12345");
  EXPECT_EQ(ReadBoundedFile(Write("empty", ""), 5).value_or("?"), "");
  const absl::StatusOr<std::string> big = ReadBoundedFile(Write("big", "123456"), 5);
  EXPECT_EQ(big.status().message(), "6 bytes, more than the limit of 5");
  EXPECT_EQ(ReadBoundedFile(dir_ + "/missing", 5).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadBoundedFile(dir_, 5).status().message(), "not a regular file");
  // A device never reaches the read (it would never end).
  EXPECT_EQ(ReadBoundedFile("/dev/zero", 5).status().message(), "not a regular file");
}

TEST_F(ReadBoundedFileTest, TiersFileIsBounded) {
  EXPECT_TRUE(absl::StrContains(LoadTiers("/dev/zero").status().message(), "/dev/zero: not a regular file"));
  const std::string huge = Write("tiers.json", std::string((1 << 20) + 1, ' '));
  EXPECT_TRUE(absl::StrContains(LoadTiers(huge).status().message(), "more than the limit of 1048576"));
}

}  // namespace
}  // namespace matformer::server
