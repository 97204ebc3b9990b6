// End-to-end tests of matformer-server: the real binary on 127.0.0.1 with
// OS-picked ports, a small random model, and real gRPC / HTTP / Python clients.
// Every call has a deadline and every server is killed when its test ends.
// No assertion depends on how fast anything runs.
#include <signal.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/barrier.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "matformer/v1/matformer.grpc.pb.h"
#include "tests/integration/test_server.h"

namespace matformer::integration {
namespace {

namespace v1 = ::matformer::v1;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr absl::Duration kCallTimeout = absl::Seconds(60);
constexpr int kMaxPromptTokens = 64;
constexpr int kMaxNewTokensLimit = 1500;
constexpr int kKvBlocks = 512;
constexpr int kMaxMessageBytes = 65536;
// Long enough to still be running while a test cancels or drains it.
constexpr int kLongGeneration = 1500;

std::string& ModelDir() {
  static std::string dir;
  return dir;
}

// The model every server here serves, written once for the whole binary.
class ModelEnvironment : public testing::Environment {
 public:
  void SetUp() override {
    ModelDir() = MakeTempDir("model");
    ASSERT_FALSE(ModelDir().empty());
    const absl::Status made = MakeRandomModel(ModelDir());
    ASSERT_TRUE(made.ok()) << made;
  }
  void TearDown() override { std::filesystem::remove_all(ModelDir()); }
};

std::vector<std::string> ServerFlags() {
  return {"--model_dir=" + ModelDir(),
          std::string("--tiers=") + MATFORMER_SOURCE_DIR + "/deploy/tiers.json",
          absl::StrCat("--max_prompt_tokens=", kMaxPromptTokens),
          absl::StrCat("--max_new_tokens_limit=", kMaxNewTokensLimit),
          "--max_stop_sequences=2",
          "--max_stop_bytes=8",
          absl::StrCat("--max_message_bytes=", kMaxMessageBytes),
          absl::StrCat("--kv_blocks=", kKvBlocks),
          "--drain_timeout=120s"};
}

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  return context;
}

v1::GenerateRequest Greedy(const std::string& prompt, int max_new_tokens, const std::string& spec = "") {
  v1::GenerateRequest request;
  request.set_text(prompt);
  request.set_max_new_tokens(max_new_tokens);
  if (!spec.empty()) request.set_spec_name(spec);
  return request;
}

struct StreamResult {
  grpc::Status status;
  std::string text;  // the chunks' text, concatenated
  std::vector<int32_t> token_ids;
  int chunks = 0;
  int summaries = 0;
  bool summary_last = false;
  v1::GenerateResponse summary;
};

StreamResult Stream(v1::MatFormer::Stub& stub, const v1::GenerateRequest& request) {
  StreamResult result;
  std::unique_ptr<grpc::ClientContext> context = Context();
  auto reader = stub.GenerateStream(context.get(), request);
  v1::GenerateStreamResponse message;
  while (reader->Read(&message)) {
    result.summary_last = message.has_summary();
    if (message.has_summary()) {
      ++result.summaries;
      result.summary = message.summary();
      continue;
    }
    ++result.chunks;
    result.text += message.text();
    result.token_ids.insert(result.token_ids.end(), message.token_ids().begin(), message.token_ids().end());
  }
  result.status = reader->Finish();
  return result;
}

std::vector<int32_t> Ids(const google::protobuf::RepeatedField<int32_t>& ids) { return {ids.begin(), ids.end()}; }

std::string Describe(const grpc::Status& status) {
  return absl::StrCat(status.error_code(), ": ", status.error_message());
}

HealthCheckResponse::ServingStatus Health(const std::shared_ptr<grpc::Channel>& channel,
                                          const std::string& service = "") {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  std::unique_ptr<grpc::ClientContext> context = Context();
  const grpc::Status status = stub->Check(context.get(), request, &response);
  return status.ok() ? response.status() : HealthCheckResponse::UNKNOWN;
}

double Metric(int metrics_port, const std::string& series) {
  absl::StatusOr<std::string> metrics = ScrapeMetrics(metrics_port);
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  if (!metrics.ok()) return std::numeric_limits<double>::quiet_NaN();
  return MetricValue(*metrics, series).value_or(std::numeric_limits<double>::quiet_NaN());
}

// Polls until `series` equals `value` (true) or `timeout` passes (false).
bool WaitForMetric(int metrics_port, const std::string& series, double value, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (Metric(metrics_port, series) == value) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

// One server shared by the tests that leave it running.
class ServerTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(ServerFlags());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  static void TearDownTestSuite() { server_.reset(); }

  void SetUp() override {
    ASSERT_NE(server_, nullptr) << "the server did not start";
    channel_ = grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials());
    stub_ = v1::MatFormer::NewStub(channel_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "server log:\n" << server_->Log();
  }

  absl::StatusOr<v1::GenerateResponse> Generate(const v1::GenerateRequest& request) {
    v1::GenerateResponse response;
    std::unique_ptr<grpc::ClientContext> context = Context();
    const grpc::Status status = stub_->Generate(context.get(), request, &response);
    if (!status.ok()) return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
    return response;
  }

  static std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::MatFormer::Stub> stub_;
};
std::unique_ptr<ServerProcess> ServerTest::server_;

TEST_F(ServerTest, HealthAndReflectionAnswer) {
  EXPECT_EQ(Health(channel_), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health(channel_, "matformer.v1.MatFormer"), HealthCheckResponse::SERVING);

  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(channel_);
  std::unique_ptr<grpc::ClientContext> context = Context();
  auto stream = reflection->ServerReflectionInfo(context.get());
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::vector<std::string> services;
  for (const auto& service : response.list_services_response().service()) services.push_back(service.name());
  EXPECT_NE(std::find(services.begin(), services.end(), "matformer.v1.MatFormer"), services.end());
  EXPECT_NE(std::find(services.begin(), services.end(), "grpc.health.v1.Health"), services.end());

  request.set_file_containing_symbol("matformer.v1.MatFormer");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_TRUE(response.has_file_descriptor_response());
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(response.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(file.package(), "matformer.v1");
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServerTest, GetModelInfoDescribesModelTiersAndCaches) {
  v1::ModelInfo info;
  std::unique_ptr<grpc::ClientContext> context = Context();
  ASSERT_TRUE(stub_->GetModelInfo(context.get(), v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.architecture().vocab_size(), 128);
  EXPECT_EQ(info.architecture().num_layers(), 4);
  EXPECT_EQ(info.architecture().max_position_embeddings(), 2048);
  ASSERT_EQ(info.granularities_size(), 4);
  EXPECT_EQ(info.granularities(0).name(), "S");
  EXPECT_EQ(info.granularities(3).name(), "XL");
  EXPECT_EQ(info.granularities(3).width(), 256);
  EXPECT_LT(info.granularities(0).active_params(), info.granularities(3).active_params());
  ASSERT_EQ(info.tiers_size(), 3);
  EXPECT_EQ(info.tiers(0).name(), "interactive");
  EXPECT_EQ(info.tiers(0).latency_budget().nanos(), 300000000);
  EXPECT_EQ(info.tiers(0).priority(), 2);
  // No quality.json: the uniform granularities, biggest first, without a measured loss.
  ASSERT_EQ(info.quality_frontier_size(), 4);
  EXPECT_EQ(info.quality_frontier(0).name(), "XL");
  EXPECT_FALSE(info.quality_frontier(0).has_expected_loss());
  EXPECT_EQ(info.kv_pool().blocks_total(), kKvBlocks);
  EXPECT_EQ(info.kv_pool().block_tokens(), 16);
  EXPECT_EQ(info.kv_pool().dtype(), "f32");  // auto: the test model's dtype
  EXPECT_EQ(info.ple_cache().max_bytes(), 64u << 20);
  EXPECT_EQ(info.policy(), "elastic");
  EXPECT_EQ(info.over_budget(), "reject");
}

TEST_F(ServerTest, StreamedTextConcatenatesToTheUnaryText) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"hello world", "XL"}, {"In the beginning", "S-M-L-XL"}, {"abc", "M-skip-L-L"}, {"the end", ""}};
  for (const auto& [prompt, spec] : cases) {
    SCOPED_TRACE(prompt + " / " + spec);
    const v1::GenerateRequest request = Greedy(prompt, 40, spec);
    absl::StatusOr<v1::GenerateResponse> unary = Generate(request);
    ASSERT_TRUE(unary.ok()) << unary.status();
    const StreamResult streamed = Stream(*stub_, request);
    ASSERT_TRUE(streamed.status.ok()) << Describe(streamed.status);
    EXPECT_EQ(streamed.text, unary->text());
    EXPECT_EQ(streamed.token_ids, Ids(unary->token_ids()));
    EXPECT_EQ(streamed.summaries, 1);
    EXPECT_TRUE(streamed.summary_last);
    EXPECT_EQ(streamed.summary.text(), unary->text());
    EXPECT_EQ(Ids(streamed.summary.token_ids()), Ids(unary->token_ids()));
    EXPECT_EQ(streamed.summary.submodel().name(), unary->submodel().name());
    EXPECT_NE(unary->finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
    EXPECT_FALSE(unary->request_id().empty());
    EXPECT_TRUE(unary->timings().has_total());
    if (!spec.empty()) {
      EXPECT_EQ(unary->submodel().name(), spec);
    }
  }
}

TEST_F(ServerTest, ExplicitLayerWidthsRunThatSubmodel) {
  v1::GenerateRequest request = Greedy("hello", 4);
  for (int64_t width : {32, 256, 64, 128}) request.add_layer_widths(width);
  request.add_skipped_layers(2);
  absl::StatusOr<v1::GenerateResponse> response = Generate(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->submodel().name(), "S-XL-skip-L");
  EXPECT_EQ(
      std::vector<int64_t>(response->submodel().layer_widths().begin(), response->submodel().layer_widths().end()),
      (std::vector<int64_t>{32, 256, 0, 128}));
  ASSERT_EQ(response->submodel().skipped_layers_size(), 1);
  EXPECT_EQ(response->submodel().skipped_layers(0), 2);
}

TEST_F(ServerTest, BudgetComesFromRequestThenTierThenDeadline) {
  // Pinned specs run whatever the budget, so only the budget's source varies.
  v1::GenerateRequest request = Greedy("hello", 2, "S");
  request.set_tier("interactive");
  request.mutable_latency_budget()->set_seconds(5);
  absl::StatusOr<v1::GenerateResponse> response = Generate(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->latency_budget().seconds(), 5);

  request.clear_latency_budget();
  response = Generate(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->latency_budget().seconds(), 0);
  EXPECT_EQ(response->latency_budget().nanos(), 300000000);

  request.clear_tier();
  response = Generate(request);  // Context() sets a deadline of kCallTimeout
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_TRUE(response->has_latency_budget());
  const absl::Duration budget =
      absl::Seconds(response->latency_budget().seconds()) + absl::Nanoseconds(response->latency_budget().nanos());
  EXPECT_GT(budget, absl::ZeroDuration());
  // gRPC rounds the timeout it sends up (to 100 ms here), so the server's
  // deadline can be a little later than the client's.
  EXPECT_LE(budget, kCallTimeout + absl::Seconds(1));

  v1::GenerateResponse no_deadline;
  grpc::ClientContext context;  // no deadline, no tier, no budget: none
  ASSERT_TRUE(stub_->Generate(&context, request, &no_deadline).ok());
  EXPECT_FALSE(no_deadline.has_latency_budget());
}

TEST_F(ServerTest, UnreachableBudgetIsRejectedWithARetryHint) {
  v1::GenerateRequest request = Greedy("hello", 8);
  request.mutable_latency_budget()->set_nanos(1000);
  v1::GenerateResponse response;
  std::unique_ptr<grpc::ClientContext> context = Context();
  const grpc::Status status = stub_->Generate(context.get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "latency budget")) << Describe(status);
  // Shed at once, with gRPC's retry pushback trailer (milliseconds).
  const auto& trailers = context->GetServerTrailingMetadata();
  const auto hint = trailers.find("grpc-retry-pushback-ms");
  ASSERT_NE(hint, trailers.end());
  int retry_ms = 0;
  EXPECT_TRUE(absl::SimpleAtoi(absl::string_view(hint->second.data(), hint->second.size()), &retry_ms));
  EXPECT_GE(retry_ms, 10);
}

// GCC 12 reports a std::string copy inlined into these lambdas as an
// overlapping memcpy of 2^63 bytes (GCC bug 105651, a false -Wrestrict).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wrestrict"
TEST_F(ServerTest, BadInputsAreInvalidArgumentsNamingTheField) {
  const std::string bad_utf8 = "ok\xC3\x28";
  struct Case {
    std::string field;  // must appear in the error message
    std::function<void(v1::GenerateRequest&)> mutate;
  };
  const std::vector<Case> cases = {
      {"prompt", [](v1::GenerateRequest& r) { r.clear_prompt(); }},
      {"text", [](v1::GenerateRequest& r) { r.set_text(""); }},
      {"text", [&](v1::GenerateRequest& r) { r.set_text(bad_utf8); }},
      // The matformer_ple format has no chat template.
      {"messages",
       [](v1::GenerateRequest& r) {
         v1::ChatMessage* message = r.mutable_chat()->add_messages();
         message->set_role("user");
         message->set_content("hello");
       }},
      {"chat.messages: 257 messages, more than the limit of 256",
       [](v1::GenerateRequest& r) {
         for (int i = 0; i < 257; ++i) r.mutable_chat()->add_messages()->set_role(i % 2 == 0 ? "user" : "assistant");
       }},
      {"chat.messages[0].content",
       [&](v1::GenerateRequest& r) {
         v1::ChatMessage* message = r.mutable_chat()->add_messages();
         message->set_role("user");
         message->set_content(bad_utf8);
       }},
      {"max_prompt_tokens",
       [](v1::GenerateRequest& r) {
         for (int i = 0; i <= kMaxPromptTokens; ++i) r.mutable_token_ids()->add_ids(5);
       }},
      {"max_prompt_tokens", [](v1::GenerateRequest& r) { r.set_text(std::string(200, 'x') + " y z"); }},
      {"token_ids", [](v1::GenerateRequest& r) { r.mutable_token_ids(); }},
      {"token_ids[1]",
       [](v1::GenerateRequest& r) {
         r.mutable_token_ids()->add_ids(2);
         r.mutable_token_ids()->add_ids(128);
       }},
      {"token_ids[0]", [](v1::GenerateRequest& r) { r.mutable_token_ids()->add_ids(-1); }},
      {"max_new_tokens", [](v1::GenerateRequest& r) { r.set_max_new_tokens(0); }},
      {"max_new_tokens", [](v1::GenerateRequest& r) { r.set_max_new_tokens(kMaxNewTokensLimit + 1); }},
      {"stop_sequences",
       [](v1::GenerateRequest& r) {
         for (const char* stop : {"a", "b", "c"}) r.add_stop_sequences(stop);
       }},
      {"stop_sequences[0]", [](v1::GenerateRequest& r) { r.add_stop_sequences("123456789"); }},
      {"stop_sequences[1]",
       [](v1::GenerateRequest& r) {
         r.add_stop_sequences("a");
         r.add_stop_sequences("");
       }},
      {"stop_sequences[0]", [&](v1::GenerateRequest& r) { r.add_stop_sequences(bad_utf8); }},
      {"tier", [](v1::GenerateRequest& r) { r.set_tier("gold"); }},
      {"tier", [&](v1::GenerateRequest& r) { r.set_tier(bad_utf8); }},
      {"sampling.temperature", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(NAN); }},
      {"sampling.temperature", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(-1); }},
      {"sampling.temperature", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(INFINITY); }},
      {"sampling.top_k", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_k(-1); }},
      {"sampling.top_k", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_k(129); }},
      {"sampling.top_p", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(0); }},
      {"sampling.top_p", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(NAN); }},
      {"spec_name", [](v1::GenerateRequest& r) { r.set_spec_name("XXL"); }},
      {"spec_name", [](v1::GenerateRequest& r) { r.set_spec_name("S-M"); }},
      {"spec_name", [&](v1::GenerateRequest& r) { r.set_spec_name(bad_utf8); }},
      {"layer_widths",
       [](v1::GenerateRequest& r) {
         for (int64_t width : {32, 33, 64, 64}) r.add_layer_widths(width);
       }},
      {"layer_widths",
       [](v1::GenerateRequest& r) {
         for (int i = 0; i < 4; ++i) r.add_layer_widths(32);
         for (int i = 0; i < 4; ++i) r.add_skipped_layers(i);
       }},
      {"layer_widths", [](v1::GenerateRequest& r) { r.add_layer_widths(32); }},
      {"skipped_layers", [](v1::GenerateRequest& r) { r.add_skipped_layers(1); }},
      {"spec_name and layer_widths",
       [](v1::GenerateRequest& r) {
         r.set_spec_name("XL");
         for (int i = 0; i < 4; ++i) r.add_layer_widths(32);
       }},
      {"latency_budget", [](v1::GenerateRequest& r) { r.mutable_latency_budget()->set_seconds(-1); }},
      {"latency_budget",
       [](v1::GenerateRequest& r) {
         r.mutable_latency_budget()->set_seconds(1);
         r.mutable_latency_budget()->set_nanos(2000000000);
       }},
      {"max_expected_loss", [](v1::GenerateRequest& r) { r.set_max_expected_loss(NAN); }},
      // Without quality.json no submodel has a measured loss to meet the floor.
      {"max_expected_loss", [](v1::GenerateRequest& r) { r.set_max_expected_loss(100); }},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("case ", i, " (", cases[i].field, ")"));
    v1::GenerateRequest request = Greedy("hello", 4);
    cases[i].mutate(request);
    absl::StatusOr<v1::GenerateResponse> unary = Generate(request);
    EXPECT_EQ(unary.status().code(), absl::StatusCode::kInvalidArgument) << unary.status();
    EXPECT_TRUE(absl::StrContains(unary.status().message(), cases[i].field)) << unary.status();
    const StreamResult streamed = Stream(*stub_, request);
    EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(streamed.status);
    EXPECT_TRUE(absl::StrContains(streamed.status.error_message(), cases[i].field)) << Describe(streamed.status);
    EXPECT_EQ(streamed.chunks + streamed.summaries, 0);
  }

  struct ScoreCase {
    std::string field;
    std::function<void(v1::ScoreRequest&)> mutate;
  };
  const std::vector<ScoreCase> score_cases = {
      {"continuation", [](v1::ScoreRequest& r) { r.clear_continuation(); }},
      {"continuation_text", [](v1::ScoreRequest& r) { r.set_continuation_text(""); }},
      {"continuation_text", [&](v1::ScoreRequest& r) { r.set_continuation_text(bad_utf8); }},
      {"continuation_token_ids[0]", [](v1::ScoreRequest& r) { r.mutable_continuation_token_ids()->add_ids(500); }},
      {"prompt", [](v1::ScoreRequest& r) { r.clear_prompt(); }},
      {"tier", [](v1::ScoreRequest& r) { r.set_tier("gold"); }},
      {"spec_name", [](v1::ScoreRequest& r) { r.set_spec_name("XXL"); }},
  };
  for (size_t i = 0; i < score_cases.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("score case ", i, " (", score_cases[i].field, ")"));
    v1::ScoreRequest request;
    request.set_text("hello");
    request.set_continuation_text(" world");
    score_cases[i].mutate(request);
    v1::ScoreResponse response;
    std::unique_ptr<grpc::ClientContext> context = Context();
    const grpc::Status status = stub_->Score(context.get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
    EXPECT_TRUE(absl::StrContains(status.error_message(), score_cases[i].field)) << Describe(status);
  }

  struct TokenizeCase {
    std::string field;
    std::function<void(v1::TokenizeRequest&)> mutate;
  };
  const std::vector<TokenizeCase> tokenize_cases = {
      {"input", [](v1::TokenizeRequest& r) { r.clear_input(); }},
      {"text", [&](v1::TokenizeRequest& r) { r.set_text(bad_utf8); }},
      {"token_ids", [](v1::TokenizeRequest& r) { r.mutable_token_ids()->add_ids(1000); }},
  };
  for (size_t i = 0; i < tokenize_cases.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("tokenize case ", i, " (", tokenize_cases[i].field, ")"));
    v1::TokenizeRequest request;
    tokenize_cases[i].mutate(request);
    v1::TokenizeResponse response;
    std::unique_ptr<grpc::ClientContext> context = Context();
    const grpc::Status status = stub_->Tokenize(context.get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
    EXPECT_TRUE(absl::StrContains(status.error_message(), tokenize_cases[i].field)) << Describe(status);
  }

  // A message over --max_message_bytes is refused by gRPC itself.
  absl::StatusOr<v1::GenerateResponse> oversized = Generate(Greedy(std::string(kMaxMessageBytes + 1, 'a'), 4));
  EXPECT_EQ(oversized.status().code(), absl::StatusCode::kResourceExhausted) << oversized.status();

  // Still healthy and serving.
  EXPECT_EQ(Health(channel_), HealthCheckResponse::SERVING);
  absl::StatusOr<v1::GenerateResponse> fine = Generate(Greedy("hello", 4));
  EXPECT_TRUE(fine.ok()) << fine.status();
}
#pragma GCC diagnostic pop

TEST_F(ServerTest, TokenizeRoundTripsAndMatchesGeneratePrompt) {
  v1::TokenizeRequest request;
  request.set_text("hello world");
  v1::TokenizeResponse ids;
  std::unique_ptr<grpc::ClientContext> context = Context();
  ASSERT_TRUE(stub_->Tokenize(context.get(), request, &ids).ok());
  ASSERT_GE(ids.token_ids_size(), 2);
  EXPECT_EQ(ids.token_ids(0), 2) << "BOS first, as for a text prompt";

  v1::TokenizeRequest back;
  *back.mutable_token_ids()->mutable_ids() = ids.token_ids();
  v1::TokenizeResponse text;
  context = Context();
  ASSERT_TRUE(stub_->Tokenize(context.get(), back, &text).ok());
  EXPECT_EQ(text.text(), "hello world");

  // A text prompt and its token ids generate the same.
  absl::StatusOr<v1::GenerateResponse> from_text = Generate(Greedy("hello world", 12, "M"));
  v1::GenerateRequest from_ids_request = Greedy("", 12, "M");
  *from_ids_request.mutable_token_ids()->mutable_ids() = ids.token_ids();
  absl::StatusOr<v1::GenerateResponse> from_ids = Generate(from_ids_request);
  ASSERT_TRUE(from_text.ok() && from_ids.ok()) << from_text.status() << from_ids.status();
  EXPECT_EQ(Ids(from_text->token_ids()), Ids(from_ids->token_ids()));
}

TEST_F(ServerTest, ScoreGivesGreedyTokensAtLeastUniformProbability) {
  absl::StatusOr<v1::GenerateResponse> generated = Generate(Greedy("In the beginning", 8, "L"));
  ASSERT_TRUE(generated.ok()) << generated.status();
  ASSERT_GT(generated->token_ids_size(), 0);
  v1::ScoreRequest request;
  request.set_text("In the beginning");
  *request.mutable_continuation_token_ids()->mutable_ids() = generated->token_ids();
  request.set_spec_name("L");
  v1::ScoreResponse response;
  std::unique_ptr<grpc::ClientContext> context = Context();
  const grpc::Status status = stub_->Score(context.get(), request, &response);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(Ids(response.token_ids()), Ids(generated->token_ids()));
  ASSERT_EQ(response.logprobs_size(), generated->token_ids_size());
  double total = 0;
  for (double logprob : response.logprobs()) {
    // Each token was the argmax, so its probability is at least 1 / vocab.
    EXPECT_GE(logprob, -std::log(128.0) - 1e-4);
    EXPECT_LE(logprob, 0.0);
    total += logprob;
  }
  EXPECT_NEAR(response.total_logprob(), total, 1e-9);
  EXPECT_EQ(response.submodel().name(), "L");
}

TEST_F(ServerTest, ConcurrentRequestsGetTheTokensTheyGetAlone) {
  struct Job {
    std::string prompt, spec, tier;
    bool stream;
  };
  const std::vector<Job> jobs = {
      {"hello world", "XL", "interactive", false},
      {"In the beginning", "S", "batch", true},
      {"abc def", "S-M-L-XL", "standard", false},
      {"the light", "M-skip-L-L", "", true},
      {"and God said", "L", "batch", false},
      {"hello world", "S-S-XL-XL", "interactive", true},
      {"x y z", "XL", "", false},
      {"morning", "M", "standard", true},
  };
  auto run = [&](const Job& job) -> std::vector<int32_t> {
    v1::GenerateRequest request = Greedy(job.prompt, 24, job.spec);
    if (!job.tier.empty()) request.set_tier(job.tier);
    if (job.stream) {
      const StreamResult result = Stream(*stub_, request);
      EXPECT_TRUE(result.status.ok()) << Describe(result.status);
      return result.token_ids;
    }
    absl::StatusOr<v1::GenerateResponse> response = Generate(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? Ids(response->token_ids()) : std::vector<int32_t>{};
  };
  std::vector<std::vector<int32_t>> alone;
  for (const Job& job : jobs) alone.push_back(run(job));

  for (int round = 0; round < 2; ++round) {
    std::vector<std::vector<int32_t>> together(jobs.size());
    absl::Barrier* start = new absl::Barrier(static_cast<int>(jobs.size()));
    std::vector<std::thread> threads;
    for (size_t i = 0; i < jobs.size(); ++i) {
      threads.emplace_back([&, i] {
        if (start->Block()) delete start;
        together[i] = run(jobs[i]);
      });
    }
    for (std::thread& thread : threads) thread.join();
    for (size_t i = 0; i < jobs.size(); ++i) {
      EXPECT_EQ(together[i], alone[i]) << "round " << round << ", job " << i << " (" << jobs[i].spec << ")";
    }
  }
}

TEST_F(ServerTest, CancellingAStreamFreesItsKvBlocks) {
  const int port = server_->metrics_port();
  ASSERT_TRUE(WaitForMetric(port, "matformer_kv_blocks_in_use", 0, absl::Seconds(30)));
  const double cancelled_before =
      Metric(port, "matformer_requests_total{code=\"CANCELLED\",method=\"GenerateStream\",tier=\"none\"}");

  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  auto reader = stub_->GenerateStream(&context, Greedy("hello world", kLongGeneration, "XL"));
  v1::GenerateStreamResponse first;
  ASSERT_TRUE(reader->Read(&first));
  EXPECT_FALSE(first.has_summary());
  // The running request holds its whole sequence's blocks.
  EXPECT_GT(Metric(port, "matformer_kv_blocks_in_use"), 0);

  context.TryCancel();
  v1::GenerateStreamResponse rest;
  while (reader->Read(&rest)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitForMetric(port, "matformer_kv_blocks_in_use", 0, absl::Seconds(30)));
  const double cancelled_before_or_zero = std::isnan(cancelled_before) ? 0 : cancelled_before;
  EXPECT_TRUE(WaitForMetric(port,
                            "matformer_requests_total{code=\"CANCELLED\",method=\"GenerateStream\",tier=\"none\"}",
                            cancelled_before_or_zero + 1, absl::Seconds(30)));
  EXPECT_EQ(Health(channel_), HealthCheckResponse::SERVING);
}

TEST_F(ServerTest, MetricsEndpointExposesAndMovesTheMetrics) {
  const int port = server_->metrics_port();
  absl::StatusOr<std::string> before = ScrapeMetrics(port);
  ASSERT_TRUE(before.ok()) << before.status();
  auto value = [](const std::string& metrics, const std::string& series) {
    return MetricValue(metrics, series).value_or(0);
  };
  constexpr int kRequests = 3;
  for (int i = 0; i < kRequests; ++i) {
    v1::GenerateRequest request = Greedy("hello world", 6, "S");
    request.set_tier("interactive");
    absl::StatusOr<v1::GenerateResponse> response = Generate(request);
    ASSERT_TRUE(response.ok()) << response.status();
  }
  absl::StatusOr<std::string> after = ScrapeMetrics(port);
  ASSERT_TRUE(after.ok()) << after.status();
  // Families appear once they have a series (requests_total after the first request).
  for (const char* name :
       {"matformer_requests_total", "matformer_time_to_first_token_seconds", "matformer_inter_token_latency_seconds",
        "matformer_request_latency_seconds", "matformer_queue_time_seconds", "matformer_batch_rows",
        "matformer_step_duration_seconds", "matformer_active_params", "matformer_slo_met_total",
        "matformer_slo_missed_total", "matformer_ple_cache_hits", "matformer_ple_cache_misses",
        "matformer_ple_cache_bytes", "matformer_kv_blocks_in_use", "matformer_kv_blocks_total",
        "matformer_requests_running", "matformer_requests_queued"}) {
    EXPECT_TRUE(absl::StrContains(*after, absl::StrCat("# TYPE ", name, " "))) << name;
  }
  // A bucket edge at the interactive tier's 300 ms budget.
  EXPECT_TRUE(
      MetricValue(*after, "matformer_request_latency_seconds_bucket{tier=\"interactive\",le=\"0.3\"}").has_value());
  EXPECT_EQ(MetricValue(*after, "matformer_kv_blocks_total"), kKvBlocks);

  const std::string ok_interactive = "matformer_requests_total{code=\"OK\",method=\"Generate\",tier=\"interactive\"}";
  EXPECT_EQ(value(*after, ok_interactive) - value(*before, ok_interactive), kRequests);
  for (const char* histogram :
       {"matformer_request_latency_seconds_count", "matformer_time_to_first_token_seconds_count",
        "matformer_queue_time_seconds_count", "matformer_active_params_count"}) {
    const std::string series = absl::StrCat(histogram, "{tier=\"interactive\"}");
    EXPECT_EQ(value(*after, series) - value(*before, series), kRequests) << series;
  }
  const std::string met = "matformer_slo_met_total{tier=\"interactive\"}";
  const std::string missed = "matformer_slo_missed_total{tier=\"interactive\"}";
  EXPECT_EQ(value(*after, met) + value(*after, missed) - value(*before, met) - value(*before, missed), kRequests);
  EXPECT_GT(value(*after, "matformer_inter_token_latency_seconds_count{tier=\"interactive\"}"),
            value(*before, "matformer_inter_token_latency_seconds_count{tier=\"interactive\"}"));
  EXPECT_GT(value(*after, "matformer_batch_rows_count"), value(*before, "matformer_batch_rows_count"));
  EXPECT_GT(value(*after, "matformer_ple_cache_hits"), value(*before, "matformer_ple_cache_hits"));
  EXPECT_GT(value(*after, "matformer_ple_cache_bytes"), 0);

  // Client mistakes count too, under their code; unknown tiers do not become labels.
  v1::GenerateRequest bad = Greedy("hello", 1);
  bad.set_tier("no-such-tier");
  EXPECT_FALSE(Generate(bad).ok());
  absl::StatusOr<std::string> last = ScrapeMetrics(port);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_GE(value(*last, "matformer_requests_total{code=\"INVALID_ARGUMENT\",method=\"Generate\",tier=\"unknown\"}"),
            1);
  EXPECT_FALSE(absl::StrContains(*last, "no-such-tier"));
}

TEST_F(ServerTest, PythonClientTalksToTheServer) {
  const std::vector<std::string> base = {
      "/usr/bin/python3", std::string(MATFORMER_SOURCE_DIR) + "/tools/python_client.py",
      std::string("--stubs_dir=") + MATFORMER_PYTHON_STUBS_DIR, "--target=" + server_->target(), "--timeout=60"};
  auto python = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = base;
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, absl::Seconds(120));
  };
  CommandResult health = python({"health"});
  EXPECT_EQ(health.exit_code, 0) << health.output;
  EXPECT_TRUE(absl::StrContains(health.output, "\"SERVING\"")) << health.output;

  absl::StatusOr<v1::GenerateResponse> unary = Generate(Greedy("hello world", 10, "M"));
  ASSERT_TRUE(unary.ok()) << unary.status();
  CommandResult generate =
      python({"generate", "--prompt=hello world", "--max_new_tokens=10", "--spec=M", "--tier=standard"});
  EXPECT_EQ(generate.exit_code, 0) << generate.output;
  EXPECT_TRUE(absl::StrContains(generate.output, "\"name\": \"M\"")) << generate.output;
  CommandResult stream = python({"generate", "--prompt=hello world", "--max_new_tokens=10", "--spec=M", "--stream"});
  EXPECT_EQ(stream.exit_code, 0) << stream.output;
  const std::vector<std::string> lines = absl::StrSplit(stream.output, '\n', absl::SkipEmpty());
  ASSERT_FALSE(lines.empty()) << stream.output;
  EXPECT_TRUE(absl::StrContains(lines.back(), "\"summary\"")) << stream.output;
  EXPECT_TRUE(absl::StrContains(lines.back(), "\"finish_reason\"")) << stream.output;

  CommandResult score = python({"score", "--prompt=hello", "--continuation= world", "--spec=S"});
  EXPECT_EQ(score.exit_code, 0) << score.output;
  EXPECT_TRUE(absl::StrContains(score.output, "\"total_logprob\"")) << score.output;
  CommandResult info = python({"info"});
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_TRUE(absl::StrContains(info.output, "\"quality_frontier\"")) << info.output;
  CommandResult tokenize = python({"tokenize", "--text=hello world"});
  EXPECT_EQ(tokenize.exit_code, 0) << tokenize.output;
  EXPECT_TRUE(absl::StrContains(tokenize.output, "\"token_ids\": [2,")) << tokenize.output;

  CommandResult bad = python({"generate", "--prompt=hello", "--max_new_tokens=0"});
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_TRUE(absl::StrContains(bad.output, "INVALID_ARGUMENT: max_new_tokens")) << bad.output;
}

TEST_F(ServerTest, CliTalksToTheServer) {
  auto cli = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {MATFORMER_CLI_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("--target=" + server_->target());
    argv.push_back("--deadline=60s");
    return RunCommand(argv, absl::Seconds(120));
  };
  CommandResult health = cli({"health"});
  EXPECT_EQ(health.exit_code, 0) << health.output;
  EXPECT_TRUE(absl::StrContains(health.output, "SERVING")) << health.output;

  absl::StatusOr<v1::GenerateResponse> unary = Generate(Greedy("hello world", 10, "L"));
  ASSERT_TRUE(unary.ok()) << unary.status();
  CommandResult json = cli({"generate", "--prompt=hello world", "--max_new_tokens=10", "--spec=L", "--json"});
  EXPECT_EQ(json.exit_code, 0) << json.output;
  v1::GenerateResponse parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.output, &parsed).ok()) << json.output;
  EXPECT_EQ(parsed.text(), unary->text());
  CommandResult stream =
      cli({"generate", "--prompt=hello world", "--max_new_tokens=10", "--spec=L", "--stream", "--budget=5s"});
  EXPECT_EQ(stream.exit_code, 0) << stream.output;
  EXPECT_TRUE(absl::StrContains(stream.output, unary->text())) << stream.output;
  EXPECT_TRUE(absl::StrContains(stream.output, "spec L")) << stream.output;
  CommandResult info = cli({"info"});
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_TRUE(absl::StrContains(info.output, "tokens in use")) << info.output;
  EXPECT_TRUE(absl::StrContains(info.output, " MiB, f32)")) << info.output;  // the KV pool's dtype

  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"score", "--prompt=hello", "--continuation= world"}, {"tokenize", "--prompt=hello"}}) {
    CommandResult result = cli(args);
    EXPECT_EQ(result.exit_code, 0) << args[0] << ": " << result.output;
  }
  CommandResult bad = cli({"generate", "--prompt=hello", "--tier=gold"});
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_TRUE(absl::StrContains(bad.output, "INVALID_ARGUMENT: tier")) << bad.output;
}

// --kv_dtype=int8: the pool reports its dtype and a quarter of f32's bytes
// plus the scales, and greedy generation runs on it.
TEST(ServerLifecycle, Int8KvCacheServes) {
  std::vector<std::string> flags = ServerFlags();
  flags.push_back("--kv_dtype=int8");
  absl::StatusOr<std::unique_ptr<ServerProcess>> started = ServerProcess::Start(flags);
  ASSERT_TRUE(started.ok()) << started.status();
  ServerProcess& server = **started;
  auto stub = v1::MatFormer::NewStub(grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials()));
  v1::ModelInfo info;
  std::unique_ptr<grpc::ClientContext> info_context = Context();
  ASSERT_TRUE(stub->GetModelInfo(info_context.get(), v1::GetModelInfoRequest(), &info).ok()) << server.Log();
  EXPECT_EQ(info.kv_pool().dtype(), "int8");
  const int64_t f32_bytes = int64_t{kKvBlocks} * info.kv_pool().block_tokens() * info.architecture().num_layers() *
                            info.architecture().num_key_value_heads() * info.architecture().head_dim() * 2 * 4;
  EXPECT_LT(info.kv_pool().bytes(), f32_bytes / 3);
  v1::GenerateResponse response;
  std::unique_ptr<grpc::ClientContext> context = Context();
  const grpc::Status status = stub->Generate(context.get(), Greedy("hello world", 8, "XL"), &response);
  ASSERT_TRUE(status.ok()) << Describe(status) << server.Log();
  EXPECT_GT(response.token_ids_size(), 0);
}

TEST(ServerLifecycle, SigtermDrainsThenExitsZero) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> started = ServerProcess::Start(ServerFlags());
  ASSERT_TRUE(started.ok()) << started.status();
  ServerProcess& server = **started;
  auto channel = grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials());
  auto stub = v1::MatFormer::NewStub(channel);

  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  auto reader = stub->GenerateStream(&context, Greedy("hello world", kLongGeneration, "XL"));
  v1::GenerateStreamResponse message;
  ASSERT_TRUE(reader->Read(&message)) << server.Log();

  server.Signal(SIGTERM);
  // Health turns NOT_SERVING (polled: the signal is handled asynchronously).
  HealthCheckResponse::ServingStatus health = HealthCheckResponse::SERVING;
  for (const absl::Time end = absl::Now() + absl::Seconds(30);
       health == HealthCheckResponse::SERVING && absl::Now() < end;) {
    health = Health(channel);
  }
  EXPECT_EQ(health, HealthCheckResponse::NOT_SERVING) << server.Log();
  // New work is refused while the running request finishes.
  v1::GenerateResponse refused;
  std::unique_ptr<grpc::ClientContext> refused_context = Context();
  const grpc::Status refused_status = stub->Generate(refused_context.get(), Greedy("hello", 2), &refused);
  EXPECT_EQ(refused_status.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(refused_status);

  int summaries = 0;
  v1::GenerateResponse summary;
  while (reader->Read(&message)) {
    if (message.has_summary()) {
      ++summaries;
      summary = message.summary();
    }
  }
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(summaries, 1);
  EXPECT_GT(summary.token_ids_size(), 0);

  absl::StatusOr<int> exit_code = server.WaitForExit(absl::Seconds(120));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status() << "\n" << server.Log();
  EXPECT_EQ(*exit_code, 0) << server.Log();
  EXPECT_TRUE(absl::StrContains(server.Log(), "drained")) << server.Log();
}

TEST(ServerLifecycle, SecondSignalExitsWithoutWaitingForTheDrain) {
  std::vector<std::string> flags = ServerFlags();
  flags.push_back("--drain_timeout=600s");
  absl::StatusOr<std::unique_ptr<ServerProcess>> started = ServerProcess::Start(flags);
  ASSERT_TRUE(started.ok()) << started.status();
  ServerProcess& server = **started;
  auto stub = v1::MatFormer::NewStub(grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  auto reader = stub->GenerateStream(&context, Greedy("hello world", kLongGeneration, "XL"));
  v1::GenerateStreamResponse message;
  ASSERT_TRUE(reader->Read(&message)) << server.Log();

  server.Signal(SIGTERM);
  for (const absl::Time end = absl::Now() + absl::Seconds(30);
       !absl::StrContains(server.Log(), "draining") && absl::Now() < end;) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  server.Signal(SIGTERM);
  absl::StatusOr<int> exit_code = server.WaitForExit(absl::Seconds(60));
  ASSERT_TRUE(exit_code.ok()) << exit_code.status() << "\n" << server.Log();
  EXPECT_EQ(*exit_code, 128 + SIGTERM) << server.Log();
  EXPECT_TRUE(absl::StrContains(server.Log(), "again: exiting without draining")) << server.Log();
  context.TryCancel();
}

TEST(ServerLifecycle, BadFlagsFailAtStartupNamingTheFlag) {
  struct Case {
    std::vector<std::string> flags;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {{"--port=70000"}, "--port=70000"},
      {{"--port=5000", "--metrics_port=5000"}, "--metrics_port"},
      {{"--max_batch=0"}, "--max_batch"},
      {{"--max_queue=0"}, "--max_queue"},
      {{"--ple_cache_mb=-1"}, "--ple_cache_mb"},
      {{"--engine_threads=-2"}, "--engine_threads=-2"},
      {{"--ffn_granule=0"}, "--ffn_granule=0"},
      {{"--kv_dtype=f16"}, "--kv_dtype=f16: expected auto, f32, bf16 or int8"},
      {{"--max_stop_bytes=0"}, "--max_stop_bytes"},
      {{"--max_stop_sequences=65"}, "--max_stop_sequences"},
      {{"--max_message_bytes=10"}, "--max_message_bytes"},
      {{"--drain_timeout=-1s"}, "--drain_timeout"},
      {{"--policy=bogus"}, "--policy"},
      {{"--over_budget=maybe"}, "--over_budget"},
      {{"--host="}, "--host"},
      {{"--tiers=/nonexistent/tiers.json"}, "--tiers"},
      {{"--model_dir=/nonexistent"}, "--model_dir"},
      // Checked against the model once it is loaded.
      {{"--policy=fixed:XXL"}, "--policy=fixed:XXL"},
      {{"--kv_blocks=2"}, "--kv_blocks=2"},
      {{"--max_prompt_tokens=4096"}, "--max_prompt_tokens"},
      {{"--max_new_tokens_limit=4096"}, "--max_new_tokens_limit"},
      {{"--latency_model=/nonexistent/latency.json"}, "--latency_model=/nonexistent/latency.json: cannot open"},
      {{"--write_latency_model=/nonexistent/dir/latency.json"}, "--write_latency_model=/nonexistent/dir"},
      {{"--slicing_table=/nonexistent.csv"}, "--slicing_table applies to Gemma 3n checkpoints only"},
      {{"stray-argument"}, "unexpected argument"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {MATFORMER_SERVER_BINARY, "--port=0", "--metrics_port=0"};
    const std::vector<std::string> flags = ServerFlags();
    argv.insert(argv.end(), flags.begin(), flags.end());
    argv.insert(argv.end(), c.flags.begin(), c.flags.end());
    const CommandResult result = RunCommand(argv, absl::Seconds(120));
    EXPECT_NE(result.exit_code, 0) << c.expected << ": " << result.output;
    EXPECT_NE(result.exit_code, -1) << c.expected << " did not exit by itself";
    EXPECT_TRUE(absl::StrContains(result.output, c.expected)) << c.expected << ": " << result.output;
  }
  // --help documents every flag.
  const CommandResult help = RunCommand({MATFORMER_SERVER_BINARY, "--help"}, absl::Seconds(60));
  for (const char* flag :
       {"--model_dir", "--host", "--port", "--metrics_port", "--tiers", "--policy", "--over_budget", "--max_batch",
        "--max_queue", "--kv_blocks", "--ple_cache_mb", "--max_prompt_tokens", "--max_new_tokens_limit",
        "--max_stop_sequences", "--max_stop_bytes", "--max_message_bytes", "--drain_timeout", "--latency_model",
        "--write_latency_model", "--online_correction", "--engine_threads", "--ffn_granule", "--slicing_table", "--kv_dtype"}) {
    EXPECT_TRUE(absl::StrContains(help.output, absl::StrCat(flag, " ("))) << flag << ":\n" << help.output;
  }
}

}  // namespace
}  // namespace matformer::integration

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  testing::AddGlobalTestEnvironment(new matformer::integration::ModelEnvironment);
  return RUN_ALL_TESTS();
}
