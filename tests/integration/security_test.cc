// Security of matformer-server end to end: TLS, mutual TLS and bearer tokens
// on the real binary (127.0.0.1, OS-picked ports) with certificates that the
// test makes at run time with the openssl command: a CA, a server certificate
// for 127.0.0.1 / localhost, a client certificate, and another CA with a
// client certificate of its own.
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "matformer/v1/matformer.grpc.pb.h"
#include "tests/integration/test_server.h"

namespace matformer::integration {
namespace {

namespace v1 = ::matformer::v1;

constexpr absl::Duration kCallTimeout = absl::Seconds(30);
// Tokens of the tokens file (tokens.json below).
constexpr char kAliceToken[] = "alice-token-0123456789";    // tiers interactive and none
constexpr char kOpsToken[] = "ops-token-0123456789abcdef";  // every tier
// Listed in the file by its SHA-256 only.
constexpr char kHashedToken[] = "hashed-token-0123456789";

struct Files {
  std::string model;
  std::string certs;
  std::string tokens;
  std::string Cert(const std::string& name) const { return absl::StrCat(certs, "/", name); }
};
Files& TestFiles() {
  static Files files;
  return files;
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}
void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

absl::Status OpenSsl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {MATFORMER_OPENSSL_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  const CommandResult result = RunCommand(argv, absl::Seconds(60));
  if (result.exit_code != 0) return absl::InternalError(absl::StrCat("openssl ", args[0], ": ", result.output));
  return absl::OkStatus();
}

// A P-256 key and certificate `name`.{key,pem} with common name `cn`, signed
// by `issuer` (self-signed when empty) with the extensions of section `kind`.
absl::Status MakeCertificate(const std::string& dir, const std::string& name, const std::string& cn,
                             const std::string& issuer, const std::string& kind) {
  const std::string base = absl::StrCat(dir, "/", name);
  if (absl::Status s = OpenSsl({"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                "-keyout", base + ".key", "-out", base + ".csr", "-subj", "/CN=" + cn});
      !s.ok()) {
    return s;
  }
  std::vector<std::string> sign = {"x509",  "-req", "-in",      base + ".csr",           "-out",        base + ".pem",
                                   "-days", "2",    "-extfile", dir + "/extensions.cnf", "-extensions", kind};
  if (issuer.empty()) {
    sign.insert(sign.end(), {"-signkey", base + ".key"});
  } else {
    const std::string issuer_base = absl::StrCat(dir, "/", issuer);
    sign.insert(sign.end(), {"-CA", issuer_base + ".pem", "-CAkey", issuer_base + ".key", "-set_serial",
                             absl::StrCat(absl::ToUnixNanos(absl::Now()))});
  }
  return OpenSsl(sign);
}

absl::Status MakeCertificates(const std::string& dir) {
  WriteFile(dir + "/extensions.cnf",
            "[ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
            "[server]\nbasicConstraints = CA:FALSE\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n"
            "extendedKeyUsage = serverAuth\n"
            "[client]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n");
  for (const auto& [name, cn, issuer, kind] :
       std::vector<std::tuple<std::string, std::string, std::string, std::string>>{
           {"ca", "test-ca", "", "ca"},
           {"server", "localhost", "ca", "server"},
           {"client", "test-client", "ca", "client"},
           {"other-ca", "other-ca", "", "ca"},
           {"rogue-client", "rogue-client", "other-ca", "client"}}) {
    if (absl::Status s = MakeCertificate(dir, name, cn, issuer, kind); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Sha256Hex(const std::string& dir, const std::string& text) {
  WriteFile(dir + "/hashed-token", text);
  const CommandResult result =
      RunCommand({MATFORMER_OPENSSL_BINARY, "dgst", "-sha256", "-r", dir + "/hashed-token"}, absl::Seconds(30));
  if (result.exit_code != 0 || result.output.size() < 64) return absl::InternalError(result.output);
  return result.output.substr(0, 64);
}

// The model, the certificates and the tokens file, made once for the binary.
class SecurityEnvironment : public testing::Environment {
 public:
  void SetUp() override {
    Files& files = TestFiles();
    files.model = MakeTempDir("model");
    files.certs = MakeTempDir("certs");
    ASSERT_FALSE(files.model.empty() || files.certs.empty());
    const absl::Status made = MakeRandomModel(files.model);
    ASSERT_TRUE(made.ok()) << made;
    const absl::Status certs = MakeCertificates(files.certs);
    ASSERT_TRUE(certs.ok()) << certs;
    absl::StatusOr<std::string> digest = Sha256Hex(files.certs, kHashedToken);
    ASSERT_TRUE(digest.ok()) << digest.status();
    files.tokens = files.certs + "/tokens.json";
    WriteFile(files.tokens, absl::StrCat("{\"", kAliceToken,
                                         "\": {\"name\": \"alice\", \"tiers\": [\"interactive\", "
                                         "\"none\"]},\n \"",
                                         kOpsToken, "\": {\"name\": \"ops\", \"tiers\": \"*\"},\n \"sha256:", *digest,
                                         "\": {\"name\": \"hashed\", \"tiers\": [\"batch\"]}}\n"));
  }
  void TearDown() override {
    std::filesystem::remove_all(TestFiles().model);
    std::filesystem::remove_all(TestFiles().certs);
  }
};

std::vector<std::string> BaseFlags() {
  return {"--model_dir=" + TestFiles().model, std::string("--tiers=") + MATFORMER_SOURCE_DIR + "/deploy/tiers.json",
          "--max_prompt_tokens=64", "--max_new_tokens_limit=64", "--kv_blocks=64"};
}

std::shared_ptr<grpc::ChannelCredentials> Tls(const std::string& ca, const std::string& cert = "",
                                              const std::string& key = "") {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ReadFile(TestFiles().Cert(ca));
  if (!cert.empty()) {
    options.pem_cert_chain = ReadFile(TestFiles().Cert(cert));
    options.pem_private_key = ReadFile(TestFiles().Cert(key));
  }
  return grpc::SslCredentials(options);
}

std::unique_ptr<grpc::ClientContext> Context(const std::string& authorization = "") {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  if (!authorization.empty()) context->AddMetadata("authorization", authorization);
  return context;
}

std::string Bearer(const std::string& token) { return "Bearer " + token; }

v1::GenerateRequest Request(const std::string& tier = "") {
  v1::GenerateRequest request;
  request.set_text("hello world");
  request.set_max_new_tokens(2);
  if (!tier.empty()) request.set_tier(tier);
  return request;
}

grpc::Status Generate(const std::shared_ptr<grpc::Channel>& channel, const std::string& authorization,
                      const v1::GenerateRequest& request = Request()) {
  auto stub = v1::MatFormer::NewStub(channel);
  v1::GenerateResponse response;
  std::unique_ptr<grpc::ClientContext> context = Context(authorization);
  return stub->Generate(context.get(), request, &response);
}

grpc::Status Health(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  std::unique_ptr<grpc::ClientContext> context = Context();
  grpc::Status status = stub->Check(context.get(), request, &response);
  if (status.ok() && response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return grpc::Status(grpc::StatusCode::UNKNOWN, "not SERVING");
  }
  return status;
}

std::string Describe(const grpc::Status& status) {
  return absl::StrCat(status.error_code(), ": ", status.error_message());
}

// TLS (server certificate only) and bearer tokens: one server for the suite.
class TlsAndTokensTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::vector<std::string> flags = BaseFlags();
    flags.insert(flags.end(), {"--tls_cert=" + TestFiles().Cert("server.pem"),
                               "--tls_key=" + TestFiles().Cert("server.key"), "--auth_tokens=" + TestFiles().tokens});
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(flags);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  static void TearDownTestSuite() { server_.reset(); }
  void SetUp() override {
    ASSERT_NE(server_, nullptr) << "the server did not start";
    channel_ = grpc::CreateChannel(server_->target(), Tls("ca.pem"));
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "server log:\n" << server_->Log();
  }

  static std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
};
std::unique_ptr<ServerProcess> TlsAndTokensTest::server_;

TEST_F(TlsAndTokensTest, TlsClientWithATokenIsServed) {
  EXPECT_TRUE(absl::StrContains(server_->Log(), "security: TLS, 3 bearer tokens")) << server_->Log();
  const grpc::Status status = Generate(channel_, Bearer(kOpsToken));
  EXPECT_TRUE(status.ok()) << Describe(status);
  // The peer really is TLS: the same call in plaintext fails (next test), and
  // a name that is not in the certificate fails verification.
  grpc::ChannelArguments arguments;
  arguments.SetSslTargetNameOverride("not-the-server.example");
  const grpc::Status wrong_name =
      Generate(grpc::CreateCustomChannel(server_->target(), Tls("ca.pem"), arguments), Bearer(kOpsToken));
  EXPECT_EQ(wrong_name.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(wrong_name);
}

TEST_F(TlsAndTokensTest, PlaintextClientIsRefused) {
  auto plaintext = grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials());
  const grpc::Status status = Generate(plaintext, Bearer(kOpsToken));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(status);
  EXPECT_FALSE(Health(plaintext).ok());
}

TEST_F(TlsAndTokensTest, ClientTrustingAnotherCaRefusesTheServer) {
  const grpc::Status status = Generate(grpc::CreateChannel(server_->target(), Tls("other-ca.pem")), Bearer(kOpsToken));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(status);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "certificate verify failed")) << Describe(status);
}

TEST_F(TlsAndTokensTest, MissingOrUnknownTokensAreUnauthenticated) {
  for (const std::string& authorization :
       {std::string(), Bearer("not-a-known-token-at-all"), Bearer(""), std::string("Basic ") + kOpsToken,
        std::string(kOpsToken), Bearer(std::string(kOpsToken) + "x"), Bearer(std::string(kOpsToken).substr(1))}) {
    const grpc::Status status = Generate(channel_, authorization);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << "'" << authorization << "': " << Describe(status);
  }
  // Every MatFormer method is covered, not only Generate.
  auto stub = v1::MatFormer::NewStub(channel_);
  v1::ModelInfo info;
  EXPECT_EQ(stub->GetModelInfo(Context().get(), v1::GetModelInfoRequest(), &info).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  v1::TokenizeRequest tokenize;
  tokenize.set_text("hello");
  v1::TokenizeResponse tokens;
  EXPECT_EQ(stub->Tokenize(Context().get(), tokenize, &tokens).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  v1::ScoreRequest score;
  score.set_text("hello");
  score.set_continuation_text(" world");
  v1::ScoreResponse scored;
  EXPECT_EQ(stub->Score(Context().get(), score, &scored).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  std::unique_ptr<grpc::ClientContext> context = Context();
  auto reader = stub->GenerateStream(context.get(), Request());
  v1::GenerateStreamResponse message;
  EXPECT_FALSE(reader->Read(&message));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // The rejections are counted like any other outcome.
  absl::StatusOr<std::string> metrics = ScrapeMetrics(server_->metrics_port());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_GE(
      MetricValue(*metrics, "matformer_requests_total{code=\"UNAUTHENTICATED\",method=\"Generate\",tier=\"none\"}")
          .value_or(0),
      7);
}

TEST_F(TlsAndTokensTest, TokensAreLimitedToTheirTiers) {
  struct Case {
    std::string token;
    std::string tier;
    grpc::StatusCode expected;
  };
  for (const Case& c : std::vector<Case>{{kAliceToken, "interactive", grpc::StatusCode::OK},
                                         {kAliceToken, "", grpc::StatusCode::OK},
                                         {kAliceToken, "batch", grpc::StatusCode::PERMISSION_DENIED},
                                         {kAliceToken, "standard", grpc::StatusCode::PERMISSION_DENIED},
                                         {kAliceToken, "no-such-tier", grpc::StatusCode::PERMISSION_DENIED},
                                         {kOpsToken, "batch", grpc::StatusCode::OK},
                                         {kOpsToken, "", grpc::StatusCode::OK},
                                         // "*" lets every tier through; an unknown one is still a bad request.
                                         {kOpsToken, "no-such-tier", grpc::StatusCode::INVALID_ARGUMENT},
                                         {kHashedToken, "batch", grpc::StatusCode::OK},
                                         {kHashedToken, "", grpc::StatusCode::PERMISSION_DENIED}}) {
    const grpc::Status status = Generate(channel_, Bearer(c.token), Request(c.tier));
    EXPECT_EQ(status.error_code(), c.expected) << c.token << " tier '" << c.tier << "': " << Describe(status);
  }
  // The scheme is case-insensitive (RFC 6750) and the denial names the token's owner.
  const grpc::Status denied = Generate(channel_, std::string("bearer ") + kAliceToken, Request("batch"));
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(denied);
  EXPECT_TRUE(absl::StrContains(denied.error_message(), "\"alice\" may not use tier \"batch\"")) << Describe(denied);
  // Score is checked the same way.
  auto stub = v1::MatFormer::NewStub(channel_);
  v1::ScoreRequest score;
  score.set_text("hello");
  score.set_continuation_text(" world");
  score.set_tier("batch");
  v1::ScoreResponse scored;
  EXPECT_EQ(stub->Score(Context(Bearer(kAliceToken)).get(), score, &scored).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  score.set_tier("interactive");
  const grpc::Status allowed = stub->Score(Context(Bearer(kAliceToken)).get(), score, &scored);
  EXPECT_TRUE(allowed.ok()) << Describe(allowed);
  // The log names the caller, never the token.
  EXPECT_TRUE(absl::StrContains(server_->Log(), "client=alice")) << server_->Log();
  EXPECT_FALSE(absl::StrContains(server_->Log(), kAliceToken)) << server_->Log();
}

TEST_F(TlsAndTokensTest, HealthAndReflectionNeedNoToken) {
  EXPECT_TRUE(Health(channel_).ok());
  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(channel_);
  std::unique_ptr<grpc::ClientContext> context = Context();
  auto stream = reflection->ServerReflectionInfo(context.get());
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_GT(response.list_services_response().service_size(), 0);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(TlsAndTokensTest, ClientsConnectWithTlsAndAToken) {
  const std::string token_file = TestFiles().certs + "/cli-token";
  WriteFile(token_file, std::string(kAliceToken) + "\n");
  auto cli = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {MATFORMER_CLI_BINARY, "--target=" + server_->target(), "--deadline=30s",
                                     "--tls_ca=" + TestFiles().Cert("ca.pem")};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, absl::Seconds(60));
  };
  CommandResult ok = cli({"generate", "--prompt=hello", "--max_new_tokens=2", "--token_file=" + token_file});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  CommandResult with_flag = cli({"tokenize", "--prompt=hello", std::string("--token=") + kOpsToken});
  EXPECT_EQ(with_flag.exit_code, 0) << with_flag.output;
  CommandResult denied = cli({"generate", "--prompt=hello", "--tier=batch", "--token_file=" + token_file});
  EXPECT_EQ(denied.exit_code, 1) << denied.output;
  EXPECT_TRUE(absl::StrContains(denied.output, "PERMISSION_DENIED")) << denied.output;
  CommandResult anonymous = cli({"info"});
  EXPECT_EQ(anonymous.exit_code, 1) << anonymous.output;
  EXPECT_TRUE(absl::StrContains(anonymous.output, "UNAUTHENTICATED")) << anonymous.output;
  CommandResult health = cli({"health"});
  EXPECT_EQ(health.exit_code, 0) << health.output;

  // The Python example client too.
  auto python = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {"/usr/bin/python3",
                                     std::string(MATFORMER_SOURCE_DIR) + "/tools/python_client.py",
                                     std::string("--stubs_dir=") + MATFORMER_PYTHON_STUBS_DIR,
                                     "--target=" + server_->target(),
                                     "--timeout=30",
                                     "--tls_ca=" + TestFiles().Cert("ca.pem")};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, absl::Seconds(60));
  };
  CommandResult python_ok = python({"--token_file=" + token_file, "generate", "--prompt=hello", "--max_new_tokens=2"});
  EXPECT_EQ(python_ok.exit_code, 0) << python_ok.output;
  CommandResult python_anonymous = python({"info"});
  EXPECT_EQ(python_anonymous.exit_code, 1) << python_anonymous.output;
  EXPECT_TRUE(absl::StrContains(python_anonymous.output, "UNAUTHENTICATED")) << python_anonymous.output;
}

// Mutual TLS: the server requires a client certificate from its CA.
TEST(MutualTls, OnlyClientsWithACertificateFromTheClientCaGetIn) {
  std::vector<std::string> flags = BaseFlags();
  flags.insert(flags.end(),
               {"--tls_cert=" + TestFiles().Cert("server.pem"), "--tls_key=" + TestFiles().Cert("server.key"),
                "--tls_client_ca=" + TestFiles().Cert("ca.pem")});
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(flags);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string target = (*server)->target();
  EXPECT_TRUE(absl::StrContains((*server)->Log(), "security: mutual TLS")) << (*server)->Log();

  const grpc::Status with_cert = Generate(grpc::CreateChannel(target, Tls("ca.pem", "client.pem", "client.key")), "");
  EXPECT_TRUE(with_cert.ok()) << Describe(with_cert);
  EXPECT_TRUE(Health(grpc::CreateChannel(target, Tls("ca.pem", "client.pem", "client.key"))).ok());

  const grpc::Status without_cert = Generate(grpc::CreateChannel(target, Tls("ca.pem")), "");
  EXPECT_EQ(without_cert.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(without_cert);
  // Health is behind mutual TLS too: the handshake comes before any RPC.
  EXPECT_FALSE(Health(grpc::CreateChannel(target, Tls("ca.pem"))).ok());

  const grpc::Status other_ca =
      Generate(grpc::CreateChannel(target, Tls("ca.pem", "rogue-client.pem", "rogue-client.key")), "");
  EXPECT_EQ(other_ca.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(other_ca);

  const grpc::Status plaintext = Generate(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()), "");
  EXPECT_EQ(plaintext.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(plaintext);
  if (testing::Test::HasFailure()) std::cerr << "server log:\n" << (*server)->Log();
}

TEST(SecurityFlags, BadValuesFailAtStartupNamingTheFlag) {
  const Files& files = TestFiles();
  const std::string garbage = files.certs + "/garbage.pem";
  WriteFile(garbage, "this is not PEM\n");
  auto tokens = [&](const std::string& name, const std::string& json) {
    const std::string path = files.certs + "/" + name;
    WriteFile(path, json);
    return "--auth_tokens=" + path;
  };
  absl::StatusOr<std::string> duplicate = Sha256Hex(files.certs, "a-long-enough-token-1");
  ASSERT_TRUE(duplicate.ok()) << duplicate.status();
  // The server's key with a certificate that expired a day ago.
  const std::string expired = files.Cert("expired.pem");
  ASSERT_TRUE(OpenSsl({"x509", "-req", "-in", files.Cert("server.csr"), "-CA", files.Cert("ca.pem"), "-CAkey",
                       files.Cert("ca.key"), "-set_serial", "7", "-days", "-1", "-out", expired})
                  .ok());
  const std::string server_cert = "--tls_cert=" + files.Cert("server.pem");
  const std::string server_key = "--tls_key=" + files.Cert("server.key");
  struct Case {
    std::vector<std::string> flags;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {{"--tls_cert=/nonexistent/cert.pem", server_key}, "--tls_cert=/nonexistent/cert.pem: cannot open"},
      {{"--tls_cert=" + garbage, server_key}, "--tls_cert=" + garbage + ": no PEM certificate"},
      {{server_cert, "--tls_key=/nonexistent/key.pem"}, "--tls_key=/nonexistent/key.pem: cannot open"},
      {{server_cert, "--tls_key=" + garbage}, "--tls_key=" + garbage + ": not an unencrypted PEM private key"},
      {{server_cert, "--tls_key=" + files.Cert("client.key")}, "does not match the certificate in --tls_cert"},
      {{"--tls_cert=" + expired, server_key}, "--tls_cert=" + expired + ": the certificate has expired"},
      {{server_cert, "--tls_key=" + files.Cert("server.pem")}, "--tls_key"},
      {{server_cert}, "--tls_key: required with --tls_cert"},
      {{server_key}, "--tls_cert: required with --tls_key"},
      {{"--tls_client_ca=" + files.Cert("ca.pem")}, "--tls_cert: required with --tls_client_ca"},
      {{server_cert, server_key, "--tls_client_ca=" + garbage}, "--tls_client_ca=" + garbage + ": no PEM"},
      {{server_cert, server_key, "--tls_client_ca=/nonexistent"}, "--tls_client_ca=/nonexistent: cannot open"},
      {{"--tls_cert=" + files.certs, server_key}, "not a regular file"},
      {{"--auth_tokens=/nonexistent/tokens.json"}, "--auth_tokens: /nonexistent/tokens.json: cannot open"},
      {{tokens("bad.json", "{not json")}, "--auth_tokens: "},
      {{tokens("empty.json", "{}")}, "no tokens"},
      {{tokens("short.json", R"({"short": {"name": "a", "tiers": "*"}})")}, "token #1: a token must be 16"},
      {{tokens("tier.json", R"({"a-long-enough-token-1": {"name": "a", "tiers": ["gold"]}})")},
       "token #1 (a).tiers: \"gold\" is not a configured tier (none, interactive, standard, batch)"},
      {{tokens("name.json", R"({"a-long-enough-token-1": {"name": "a b", "tiers": "*"}})")}, "token #1.name"},
      {{tokens("field.json", R"({"a-long-enough-token-1": {"name": "a", "tiers": "*", "admin": true}})")},
       "unknown field \"admin\""},
      {{tokens("tiers.json", R"({"a-long-enough-token-1": {"name": "a"}})")}, "token #1 (a).tiers: required"},
      {{tokens("dup.json", absl::StrCat(R"({"a-long-enough-token-1": {"name": "a", "tiers": "*"}, "sha256:)",
                                        *duplicate, R"(": {"name": "b", "tiers": "*"}})"))},
       "token #2 (b): the same token as \"a\""},
      {{"--metrics_host=not an address"}, "--metrics_host"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {MATFORMER_SERVER_BINARY, "--port=0", "--metrics_port=0"};
    const std::vector<std::string> flags = BaseFlags();
    argv.insert(argv.end(), flags.begin(), flags.end());
    argv.insert(argv.end(), c.flags.begin(), c.flags.end());
    const CommandResult result = RunCommand(argv, absl::Seconds(120));
    EXPECT_EQ(result.exit_code, 2) << c.expected << ": " << result.output;
    EXPECT_TRUE(absl::StrContains(result.output, c.expected)) << c.expected << ": " << result.output;
    EXPECT_FALSE(absl::StrContains(result.output, "listening on")) << result.output;
  }
  const CommandResult help = RunCommand({MATFORMER_SERVER_BINARY, "--help"}, absl::Seconds(60));
  for (const char* flag : {"--tls_cert", "--tls_key", "--tls_client_ca", "--auth_tokens", "--metrics_host"}) {
    EXPECT_TRUE(absl::StrContains(help.output, absl::StrCat(flag, " ("))) << flag << ":\n" << help.output;
  }
}

}  // namespace
}  // namespace matformer::integration

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  testing::AddGlobalTestEnvironment(new matformer::integration::SecurityEnvironment);
  return RUN_ALL_TESTS();
}
