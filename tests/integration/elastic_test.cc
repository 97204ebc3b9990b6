// Elastic serving end to end: the planner's choices seen through the real
// server on the shipped default model, and the load generator against a real
// server. Assertions are about which submodel is chosen and whether every
// request is accounted for, never about how fast anything ran.
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "matformer/v1/matformer.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/integration/test_server.h"

namespace matformer::integration {
namespace {

namespace v1 = ::matformer::v1;

constexpr absl::Duration kCallTimeout = absl::Seconds(120);
constexpr char kPrompt[] = "And God said, Let there be light: and there was light. And God saw the light,";

// The planner's choices depend on step times. A fixed latency model with
// online correction off makes them a function of load and budget alone, so
// these tests do not depend on how fast this machine is right now.
constexpr char kLatencyModel[] = R"({"granularities": {
    "S": {"fixed_ms": 0.5, "per_row_ms": 0.05}, "M": {"fixed_ms": 0.8, "per_row_ms": 0.08},
    "L": {"fixed_ms": 1.4, "per_row_ms": 0.15}, "XL": {"fixed_ms": 2.5, "per_row_ms": 0.3}}})";

std::vector<std::string> DefaultModelFlags(const std::string& latency_model) {
  return {std::string("--model_dir=") + MATFORMER_SOURCE_DIR + "/models/default",
          std::string("--tiers=") + MATFORMER_SOURCE_DIR + "/deploy/tiers.json",
          "--max_batch=64",
          "--drain_timeout=1s",
          "--latency_model=" + latency_model,
          "--online_correction=false"};
}

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  return context;
}

v1::GenerateRequest WithBudget(int max_new_tokens, std::optional<absl::Duration> budget) {
  v1::GenerateRequest request;
  request.set_text(kPrompt);
  request.set_max_new_tokens(max_new_tokens);
  if (budget.has_value()) {
    *request.mutable_latency_budget() =
        google::protobuf::util::TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(*budget));
  }
  return request;
}

// A stream that has been planned and started: its first message arrived (or
// it already failed). The rest is read by Finish().
class OpenStream {
 public:
  OpenStream(v1::MatFormer::Stub& stub, const v1::GenerateRequest& request)
      : context_(Context()), reader_(stub.GenerateStream(context_.get(), request)) {
    started_ = reader_->Read(&first_);
  }
  // The submodel's active parameters, or 0 when the request was refused.
  int64_t Finish() {
    v1::GenerateStreamResponse message = first_;
    bool more = started_;
    int64_t params = 0;
    while (more) {
      if (message.has_summary()) params = message.summary().submodel().active_params();
      more = reader_->Read(&message);
    }
    status_ = reader_->Finish();
    return status_.ok() ? params : 0;
  }
  const grpc::Status& status() const { return status_; }
  bool started() const { return started_; }
  void Cancel() { context_->TryCancel(); }

 private:
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader_;
  v1::GenerateStreamResponse first_;
  bool started_ = false;
  grpc::Status status_;
};

class DefaultModelTest : public testing::Test {
 protected:
  void SetUp() override {
    const std::string latency_model = MakeTempDir("latency") + "/latency.json";
    std::ofstream(latency_model) << kLatencyModel;
    absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(DefaultModelFlags(latency_model));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::MatFormer::NewStub(grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (HasFailure() && server_ != nullptr) std::cerr << "server log:\n" << server_->Log();
  }

  absl::StatusOr<v1::GenerateResponse> Generate(const v1::GenerateRequest& request) {
    v1::GenerateResponse response;
    std::unique_ptr<grpc::ClientContext> context = Context();
    const grpc::Status status = stub_->Generate(context.get(), request, &response);
    if (!status.ok()) return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
    return response;
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::MatFormer::Stub> stub_;
};

// Budgets from loose to impossible, one request at a time.
TEST_F(DefaultModelTest, ShrinkingBudgetNeverGrowsTheChosenSubmodel) {
  std::vector<double> budgets_ms;
  std::vector<int64_t> params;
  for (double ms = 400; ms >= 2; ms *= 0.8) {
    budgets_ms.push_back(ms);
    OpenStream stream(*stub_, WithBudget(32, absl::Milliseconds(ms)));
    params.push_back(stream.Finish());
    EXPECT_TRUE(stream.status().ok() || stream.status().error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED)
        << stream.status().error_message();
  }
  std::set<int64_t> distinct(params.begin(), params.end());
  for (size_t i = 1; i < params.size(); ++i) {
    EXPECT_LE(params[i], params[i - 1]) << "budget " << budgets_ms[i] << " ms got " << params[i]
                                        << " active params, budget " << budgets_ms[i - 1] << " ms got "
                                        << params[i - 1];
  }
  EXPECT_GT(params.front(), 0) << "the loosest budget was refused";
  EXPECT_EQ(params.back(), 0) << "a 2 ms budget for 32 tokens was served";
  EXPECT_GE(distinct.size(), 4u) << "the sweep should visit at least three submodels and the refusal: "
                                 << testing::PrintToString(params);
}

TEST_F(DefaultModelTest, UnderLoadTheSameBudgetGetsASmallerSubmodel) {
  // Budgets in multiples of what the best submodel needs when idle.
  absl::StatusOr<v1::GenerateResponse> unlimited = Generate(WithBudget(8, absl::Seconds(3600)));
  ASSERT_TRUE(unlimited.ok()) << unlimited.status();
  const double needed_ms =
      std::max(1.0, static_cast<double>(
                        google::protobuf::util::TimeUtil::DurationToMilliseconds(unlimited->timings().predicted_total())));
  std::vector<absl::Duration> budgets;
  for (double multiple : {0.5, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0}) budgets.push_back(absl::Milliseconds(multiple * needed_ms));
  auto sizes = [&]() {
    std::vector<int64_t> params;
    for (absl::Duration budget : budgets) params.push_back(OpenStream(*stub_, WithBudget(8, budget)).Finish());
    return params;
  };
  const std::vector<int64_t> idle = sizes();

  // Loaded: long generations of the smallest model, all running. (Rows of a
  // wide model would stream the wide weights every step whatever the
  // newcomer picks; narrow rows leave the choice to matter.)
  std::vector<std::unique_ptr<OpenStream>> load;
  for (int i = 0; i < 16; ++i) {
    v1::GenerateRequest request = WithBudget(250, absl::Seconds(3600));
    request.set_spec_name("S");
    load.push_back(std::make_unique<OpenStream>(*stub_, request));
    ASSERT_TRUE(load.back()->started()) << load.back()->Finish() << " " << load.back()->status().error_message();
  }
  const std::vector<int64_t> loaded = sizes();
  for (auto& stream : load) stream->Cancel();
  for (auto& stream : load) stream->Finish();

  bool smaller_but_served = false;
  for (size_t i = 0; i < budgets.size(); ++i) {
    // 0: refused.
    EXPECT_LE(loaded[i], idle[i]) << "budget " << absl::FormatDuration(budgets[i]);
    smaller_but_served |= loaded[i] > 0 && loaded[i] < idle[i];
  }
  EXPECT_TRUE(smaller_but_served) << "no budget got a smaller (served) submodel under load; idle "
                                  << testing::PrintToString(idle) << ", loaded " << testing::PrintToString(loaded);
}

// Bad flags and mix files stop the load generator before it connects, naming
// the flag and its limit.
TEST(LoadgenTest, BadFlagsNameTheFlagAndTheLimit) {
  struct Case {
    std::vector<std::string> flags;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {{"--mode=burst"}, "--mode: must be open or closed"},
      {{"--arrivals=uniform"}, "--arrivals: must be poisson or constant"},
      {{"--rate=0"}, "--rate: must be in (0, 10000]"},
      {{"--concurrency=0"}, "--concurrency: must be in [1, 10000]"},
      {{"--duration_s=-1"}, "--duration_s: must be in (0, 86400]"},
      {{"--warmup_s=4000"}, "--warmup_s: must be in [0, 3600]"},
      {{"--drain_s=-1"}, "--drain_s: must be in [0, 3600]"},
      {{"--sweep_attainment=1.5"}, "--sweep_attainment: must be in (0, 1]"},
      {{"--sweep_rates=4,2"}, "--sweep_rates: must be ascending rates in (0, 10000]; got '2'"},
      {{"--sweep_rates=4", "--mode=closed"}, "--sweep_rates: must be used with --mode=open"},
      {{"--mix=/nonexistent/mix.json"}, "--mix=/nonexistent/mix.json: cannot open"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {MATFORMER_LOADGEN_BINARY, "--target=127.0.0.1:1",
                                     std::string("--mix=") + MATFORMER_SOURCE_DIR + "/deploy/loadgen/mix.json"};
    argv.insert(argv.end(), c.flags.begin(), c.flags.end());
    const CommandResult result = RunCommand(argv, absl::Seconds(60));
    EXPECT_EQ(result.exit_code, 2) << c.expected << ": " << result.output;
    EXPECT_NE(result.output.find(c.expected), std::string::npos) << c.expected << ": " << result.output;
  }
}

// The load generator against a real server: a short open-loop run whose
// report accounts for every request it sent, and agrees with the server.
TEST(LoadgenTest, ReportAccountsForEveryRequest) {
  const std::string dir = MakeTempDir("loadgen");
  ASSERT_TRUE(MakeRandomModel(dir + "/model").ok());
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(
      {"--model_dir=" + dir + "/model", std::string("--tiers=") + MATFORMER_SOURCE_DIR + "/deploy/tiers.json"});
  ASSERT_TRUE(server.ok()) << server.status();
  {
    std::ofstream mix(dir + "/mix.json");
    mix << R"({"tiers": [
      {"name": "interactive", "share": 2, "max_new_tokens": 8, "prompt_tokens": [4, 24]},
      {"name": "by-deadline", "share": 1, "max_new_tokens": 16, "prompt_tokens": [8, 32],
       "budget_via": "deadline", "budget_ms": 2000}]})";
  }
  const std::string json_path = dir + "/report.json";
  const CommandResult run = RunCommand(
      {MATFORMER_LOADGEN_BINARY, "--target=" + (*server)->target(), "--mix=" + dir + "/mix.json",
       std::string("--prompts=") + MATFORMER_SOURCE_DIR + "/models/default/heldout.txt", "--rate=20",
       "--duration_s=3", "--warmup_s=1", "--drain_s=30", "--json_out=" + json_path},
      absl::Seconds(120));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("in-SLO"), std::string::npos) << run.output;

  std::ifstream file(json_path);
  const nlohmann::json report = nlohmann::json::parse(file, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(report.is_discarded());
  EXPECT_EQ(report["policy"], "elastic");
  ASSERT_EQ(report["runs"].size(), 1u);
  const nlohmann::json& result = report["runs"][0];
  ASSERT_EQ(result["tiers"].size(), 2u);
  EXPECT_EQ(result["tiers"][0]["tier"], "interactive");
  EXPECT_EQ(result["tiers"][1]["tier"], "by-deadline");
  EXPECT_EQ(result["tiers"][1]["budget_s"], 2.0);
  int64_t sent = 0;
  for (const nlohmann::json& tier : result["tiers"]) {
    int64_t accounted = tier["ok"].get<int64_t>();
    for (const auto& [code, count] : tier["errors"].items()) accounted += count.get<int64_t>();
    EXPECT_EQ(accounted, tier["sent"].get<int64_t>()) << tier.dump();
    for (const char* key : {"p50", "p90", "p99", "max", "mean"}) EXPECT_TRUE(tier["latency_s"].contains(key));
    EXPECT_TRUE(tier.contains("attainment"));
    EXPECT_TRUE(tier.contains("goodput_rps"));
    EXPECT_TRUE(tier.contains("active_params"));
    sent += tier["sent"].get<int64_t>();
  }
  EXPECT_GT(sent, 0);
  EXPECT_EQ(result["total"]["sent"].get<int64_t>(), sent);
  // Every request the load generator sent (warm-up included) reached the server.
  absl::StatusOr<std::string> metrics = ScrapeMetrics((*server)->metrics_port());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  double served = 0;
  for (absl::string_view line : absl::StrSplit(*metrics, '\n')) {
    if (absl::StartsWith(line, "matformer_requests_total{") &&
        absl::StrContains(line, "method=\"GenerateStream\"")) {
      double value = 0;
      ASSERT_TRUE(absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value)) << line;
      served += value;
    }
  }
  EXPECT_EQ(served, result["sent_including_warmup"].get<double>()) << *metrics;
}

}  // namespace
}  // namespace matformer::integration
