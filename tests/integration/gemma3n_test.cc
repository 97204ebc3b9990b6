// A Gemma 3n checkpoint served end to end: the real server on the tiny
// checkpoint (tests/data/gemma3n-tiny) with a slicing table in the published
// format as its quality table, and a real gRPC client. The planner runs on a
// fixed latency model with online correction off, so which slice a budget gets
// depends on the budget alone, not on this machine's speed.
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "matformer/v1/matformer.grpc.pb.h"
#include "tests/integration/test_server.h"

namespace matformer::integration {
namespace {

namespace v1 = ::matformer::v1;

constexpr absl::Duration kCallTimeout = absl::Seconds(120);

// Step times per FFN width of the tiny model (slabs of 32 neurons).
constexpr char kLatencyModel[] = R"({"granularities": {
    "32": {"fixed_ms": 0.5, "per_row_ms": 0.05}, "64": {"fixed_ms": 0.8, "per_row_ms": 0.08},
    "96": {"fixed_ms": 1.1, "per_row_ms": 0.11}, "128": {"fixed_ms": 1.4, "per_row_ms": 0.14}}})";

class Gemma3nServerTest : public testing::Test {
 protected:
  void SetUp() override {
    const std::string latency_model = MakeTempDir("gemma3n-latency") + "/latency.json";
    std::ofstream(latency_model) << kLatencyModel;
    const std::string data = std::string(MATFORMER_SOURCE_DIR) + "/tests/data";
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start({"--model_dir=" + data + "/gemma3n-tiny", "--ffn_granule=32",
                              "--slicing_table=" + data + "/gemma3n-tiny-slicing.csv",
                              std::string("--tiers=") + MATFORMER_SOURCE_DIR + "/deploy/tiers.json",
                              "--latency_model=" + latency_model, "--online_correction=false", "--drain_timeout=1s",
                              "--kv_dtype=bf16"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::MatFormer::NewStub(grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (HasFailure() && server_ != nullptr) std::cerr << "server log:\n" << server_->Log();
  }

  grpc::Status Generate(const v1::GenerateRequest& request, v1::GenerateResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
    return stub_->Generate(&context, request, response);
  }

  static v1::GenerateRequest Request(int max_new_tokens, std::optional<absl::Duration> budget = std::nullopt) {
    v1::GenerateRequest request;
    request.set_text("the cat is on the");
    request.set_max_new_tokens(max_new_tokens);
    if (budget.has_value()) {
      *request.mutable_latency_budget() =
          google::protobuf::util::TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(*budget));
    }
    return request;
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::MatFormer::Stub> stub_;
};

TEST_F(Gemma3nServerTest, ModelInfoListsThePublishedSlicesBestFirst) {
  grpc::ClientContext context;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.architecture().family(), "gemma3n");
  EXPECT_EQ(info.architecture().num_layers(), 25);
  std::vector<std::string> labels;
  for (const v1::Submodel& submodel : info.quality_frontier()) labels.push_back(submodel.label());
  EXPECT_EQ(labels, (std::vector<std::string>{"Tiny full", "Tiny mixed", "Tiny half", "Tiny narrow skipping"}));
  EXPECT_NEAR(info.quality_frontier(0).expected_loss(), 0.4, 1e-9);  // 1 - 60% MMLU
  EXPECT_EQ(info.quality_frontier(3).skipped_layers_size(), 2);
  EXPECT_EQ(info.kv_pool().dtype(), "bf16");  // --kv_dtype; the checkpoint is f32
}

TEST_F(Gemma3nServerTest, EachRequestGetsThePublishedSliceItsBudgetAffords) {
  v1::GenerateResponse loose;
  ASSERT_TRUE(Generate(Request(20, absl::Seconds(10)), &loose).ok());
  EXPECT_EQ(loose.submodel().label(), "Tiny full");
  EXPECT_EQ(loose.token_ids_size(), 20);
  // By the fixed latency model 20 tokens take about 33 ms at full width and
  // 19 ms at half width (before the planner's margin): 25 ms needs a cheaper slice.
  v1::GenerateResponse tight;
  const grpc::Status tight_status = Generate(Request(20, absl::Milliseconds(25)), &tight);
  ASSERT_TRUE(tight_status.ok()) << tight_status.error_message();
  EXPECT_LT(tight.submodel().active_params(), loose.submodel().active_params());
  EXPECT_NE(tight.submodel().label(), "Tiny full");
  EXPECT_FALSE(tight.submodel().label().empty());
  v1::GenerateResponse impossible;
  EXPECT_EQ(Generate(Request(20, absl::Milliseconds(1)), &impossible).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(Gemma3nServerTest, PinnedSlicesRunAndInvalidOnesAreRefusedNamingTheLayer) {
  v1::GenerateRequest pinned = Request(8);
  for (int l = 0; l < 25; ++l) pinned.add_layer_widths(l < 12 ? 32 : 96);
  pinned.add_skipped_layers(5);
  v1::GenerateResponse response;
  const grpc::Status ok = Generate(pinned, &response);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(response.submodel().skipped_layers_size(), 1);
  EXPECT_EQ(response.submodel().layer_widths(0), 32);
  EXPECT_EQ(response.submodel().layer_widths(5), 0);

  // Layer 19 holds the K/V that the full-attention layers after it reuse.
  v1::GenerateRequest skips_source = Request(8);
  for (int l = 0; l < 25; ++l) skips_source.add_layer_widths(64);
  skips_source.add_skipped_layers(19);
  const grpc::Status refused = Generate(skips_source, &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "19")) << refused.error_message();

  // A width between the slabs of 32.
  v1::GenerateRequest off_slab = Request(8);
  for (int l = 0; l < 25; ++l) off_slab.add_layer_widths(l == 3 ? 48 : 64);
  EXPECT_EQ(Generate(off_slab, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(Gemma3nServerTest, ChatMessagesGoThroughTheChatTemplate) {
  v1::GenerateRequest chat;
  chat.set_max_new_tokens(6);
  v1::ChatMessage* system = chat.mutable_chat()->add_messages();
  system->set_role("system");
  system->set_content("be brief");
  v1::ChatMessage* user = chat.mutable_chat()->add_messages();
  user->set_role("user");
  user->set_content("the cat");
  v1::GenerateResponse response;
  const grpc::Status ok = Generate(chat, &response);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_GT(response.token_ids_size(), 0);

  // The same prompt as text, formatted by hand: the same tokens (greedy).
  v1::GenerateRequest text;
  text.set_text("<start_of_turn>user\nbe brief\n\nthe cat<end_of_turn>\n<start_of_turn>model\n");
  text.set_max_new_tokens(6);
  v1::GenerateResponse text_response;
  ASSERT_TRUE(Generate(text, &text_response).ok());
  EXPECT_EQ(std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end()),
            std::vector<int32_t>(text_response.token_ids().begin(), text_response.token_ids().end()));

  v1::GenerateRequest out_of_order;
  out_of_order.mutable_chat()->add_messages()->set_role("assistant");
  const grpc::Status refused = Generate(out_of_order, &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "messages")) << refused.error_message();
  v1::GenerateRequest empty;
  empty.mutable_chat();
  EXPECT_EQ(Generate(empty, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// A slicing table whose rows do not fit the checkpoint stops the server at
// start-up, naming the table and the row.
TEST(Gemma3nServerStartup, ATableOfAnotherModelIsRefusedNamingTheRow) {
  const std::string data = std::string(MATFORMER_SOURCE_DIR) + "/tests/data";
  const CommandResult result =
      RunCommand({MATFORMER_SERVER_BINARY, "--port=0", "--metrics_port=0", "--model_dir=" + data + "/gemma3n-tiny",
                  "--ffn_granule=32", "--slicing_table=" + data + "/gemma3n-slicing-configs.csv",
                  std::string("--tiers=") + MATFORMER_SOURCE_DIR + "/deploy/tiers.json"},
                 absl::Seconds(120));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_TRUE(absl::StrContains(result.output, "gemma3n-slicing-configs.csv: row 'Main model'")) << result.output;
  EXPECT_FALSE(absl::StrContains(result.output, "listening on")) << result.output;
}

}  // namespace
}  // namespace matformer::integration
