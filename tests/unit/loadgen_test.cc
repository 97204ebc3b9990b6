// The load generator's statistics and mix parsing, on synthetic data.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/loadgen/mix.h"
#include "tools/loadgen/report.h"

namespace matformer::loadgen {
namespace {

using ::testing::HasSubstr;

RequestRecord Ok(const std::string& tier, double latency, double budget, int64_t params, double loss) {
  RequestRecord r;
  r.tier = tier;
  r.status = "OK";
  r.latency_s = latency;
  r.first_token_s = latency / 4;
  r.budget_s = budget;
  r.tokens = 8;
  r.active_params = params;
  r.expected_loss = loss;
  r.server_total_s = latency - 0.001;
  r.predicted_total_s = 2 * (latency - 0.001);
  return r;
}

RequestRecord Failed(const std::string& tier, const std::string& status, double latency, double budget) {
  RequestRecord r;
  r.tier = tier;
  r.status = status;
  r.latency_s = latency;
  r.budget_s = budget;
  return r;
}

TEST(PercentileTest, NearestRank) {
  std::vector<double> values;
  for (int i = 100; i >= 1; --i) values.push_back(i);  // unsorted on purpose
  EXPECT_EQ(Percentile(values, 50), 50);
  EXPECT_EQ(Percentile(values, 90), 90);
  EXPECT_EQ(Percentile(values, 99), 99);
  EXPECT_EQ(Percentile(values, 100), 100);
  EXPECT_EQ(Percentile(values, 0), 1);
  EXPECT_EQ(Percentile({7}, 99), 7);
  EXPECT_EQ(Percentile({}, 50), 0);
  // Three values: p50 is the 2nd (rank ceil(1.5) = 2), p90 the 3rd.
  EXPECT_EQ(Percentile({3, 1, 2}, 50), 2);
  EXPECT_EQ(Percentile({3, 1, 2}, 90), 3);
}

TEST(ReportTest, AttainmentGoodputAndErrorsPerTier) {
  std::vector<RequestRecord> records;
  // interactive, budget 0.3 s: 8 in budget, 1 late, 1 rejected.
  for (int i = 0; i < 8; ++i) records.push_back(Ok("interactive", 0.1 + 0.01 * i, 0.3, 1000, 3.7));
  records.push_back(Ok("interactive", 0.5, 0.3, 1000, 3.7));
  records.push_back(Failed("interactive", "RESOURCE_EXHAUSTED", 0.001, 0.3));
  // batch, budget 10 s: 2 in budget with two submodel sizes, 1 deadline, 1 unfinished.
  records.push_back(Ok("batch", 2, 10, 4000, 3.6));
  records.push_back(Ok("batch", 3, 10, 2000, 3.8));
  records.push_back(Failed("batch", "DEADLINE_EXCEEDED", 10, 10));
  records.push_back(Failed("batch", "UNFINISHED_AT_END", 12, 10));

  const Report report = BuildReport(records, /*measured_s=*/5, {"interactive", "standard", "batch"});
  ASSERT_EQ(report.tiers.size(), 3u);
  const TierReport& interactive = report.tiers[0];
  EXPECT_EQ(interactive.tier, "interactive");
  EXPECT_EQ(interactive.sent, 10);
  EXPECT_EQ(interactive.ok, 9);
  EXPECT_EQ(interactive.within_budget, 8);
  EXPECT_DOUBLE_EQ(interactive.attainment, 0.8);
  EXPECT_DOUBLE_EQ(interactive.goodput_rps, 8.0 / 5);
  EXPECT_EQ(interactive.errors.at("RESOURCE_EXHAUSTED"), 1);
  EXPECT_EQ(interactive.latency_s.count, 9);
  EXPECT_DOUBLE_EQ(interactive.latency_s.max, 0.5);
  EXPECT_DOUBLE_EQ(interactive.latency_s.p50, 0.14);
  EXPECT_DOUBLE_EQ(interactive.first_token_s.max, 0.125);
  EXPECT_DOUBLE_EQ(*interactive.mean_expected_loss, 3.7);
  EXPECT_NEAR(*interactive.mean_predicted_over_actual, 2.0, 1e-12);
  EXPECT_NEAR(*interactive.mean_client_minus_server_s, 0.001, 1e-12);

  const TierReport& standard = report.tiers[1];  // listed, no requests
  EXPECT_EQ(standard.sent, 0);
  EXPECT_EQ(standard.attainment, 0);
  EXPECT_FALSE(standard.mean_expected_loss.has_value());

  const TierReport& batch = report.tiers[2];
  EXPECT_EQ(batch.sent, 4);
  EXPECT_EQ(batch.ok, 2);
  EXPECT_DOUBLE_EQ(batch.attainment, 0.5);
  EXPECT_EQ(batch.errors.at("DEADLINE_EXCEEDED"), 1);
  EXPECT_EQ(batch.errors.at("UNFINISHED_AT_END"), 1);
  EXPECT_EQ(batch.active_params.at(4000), 1);
  EXPECT_EQ(batch.active_params.at(2000), 1);
  EXPECT_DOUBLE_EQ(*batch.mean_active_params, 3000);
  EXPECT_DOUBLE_EQ(*batch.mean_expected_loss, 3.7);

  // Every request is accounted for: sent = ok + errors, per tier and in total.
  EXPECT_EQ(report.total.sent, 14);
  int64_t accounted = report.total.ok;
  for (const auto& [code, count] : report.total.errors) accounted += count;
  EXPECT_EQ(accounted, report.total.sent);
  EXPECT_EQ(report.total.within_budget, 10);
}

TEST(ReportTest, JsonAndTableCarryEveryTier) {
  const Report report = BuildReport({Ok("a", 0.1, 1, 10, 3), Failed("b", "UNAVAILABLE", 0.1, 1)}, 2);
  const nlohmann::json json = ToJson(report);
  ASSERT_EQ(json["tiers"].size(), 2u);
  EXPECT_EQ(json["tiers"][0]["tier"], "a");
  EXPECT_EQ(json["tiers"][1]["errors"]["UNAVAILABLE"], 1);
  EXPECT_EQ(json["total"]["sent"], 2);
  EXPECT_TRUE(json["tiers"][1]["mean_expected_loss"].is_null());
  const std::string table = FormatTable(report);
  EXPECT_THAT(table, HasSubstr("errors b: UNAVAILABLE 1"));
  EXPECT_THAT(table, HasSubstr("50.0%"));
}

TEST(MixTest, ParsesAndNormalizesShares) {
  absl::StatusOr<Mix> mix = ParseMix(R"({"tiers": [
      {"name": "fast", "share": 3, "max_new_tokens": 8, "prompt_tokens": [4, 16]},
      {"name": "slow", "share": 1, "max_new_tokens": 64, "prompt_tokens": [32, 32],
       "budget_via": "deadline", "budget_ms": 2500}]})");
  ASSERT_TRUE(mix.ok()) << mix.status();
  ASSERT_EQ(mix->tiers.size(), 2u);
  EXPECT_DOUBLE_EQ(mix->tiers[0].share, 0.75);
  EXPECT_EQ(mix->tiers[0].budget_via, BudgetVia::kTier);
  EXPECT_FALSE(mix->tiers[0].budget.has_value());
  EXPECT_EQ(mix->tiers[1].budget_via, BudgetVia::kDeadline);
  EXPECT_EQ(*mix->tiers[1].budget, absl::Milliseconds(2500));
  EXPECT_EQ(mix->tiers[1].min_prompt_tokens, 32);
}

TEST(MixTest, ShippedMixParses) {
  absl::StatusOr<Mix> mix = LoadMix(std::string(MATFORMER_SOURCE_DIR) + "/deploy/loadgen/mix.json");
  ASSERT_TRUE(mix.ok()) << mix.status();
  EXPECT_EQ(mix->tiers.size(), 3u);
}

TEST(MixTest, ErrorsNameTheField) {
  const std::string tier = R"("name": "t", "share": 1, "max_new_tokens": 8, "prompt_tokens": [4, 16])";
  struct Case {
    std::string json, message;
  };
  const std::vector<Case> cases = {
      {"not json", "not valid JSON"},
      {"{}", "non-empty \"tiers\""},
      {R"({"tiers": [], "x": 1})", "non-empty \"tiers\""},
      {R"({"tiers": [{)" + tier + R"(}], "extra": 1})", "mix.extra: unknown field"},
      {R"({"tiers": [{)" + tier + R"(, "colour": 1}]})", "mix.tiers[0].colour: unknown field"},
      {R"({"tiers": [{"share": 1, "max_new_tokens": 8, "prompt_tokens": [4, 16]}]})", "mix.tiers[0].name: missing"},
      {R"({"tiers": [{"name": "t", "share": 0, "max_new_tokens": 8, "prompt_tokens": [4, 16]}]})",
       "(t).share: must be a number in (0, 1e6]"},
      {R"({"tiers": [{"name": "t", "share": 1, "max_new_tokens": 0, "prompt_tokens": [4, 16]}]})",
       "(t).max_new_tokens: must be an integer in [1, 4096]"},
      {R"({"tiers": [{"name": "t", "share": 1, "max_new_tokens": 8, "prompt_tokens": [16, 4]}]})",
       "(t).prompt_tokens: must be [min, max] with 1 <= min <= max <= 100000"},
      {R"({"tiers": [{)" + tier + R"(, "budget_via": "header"}]})", "(t).budget_via: must be"},
      {R"({"tiers": [{)" + tier + R"(, "budget_ms": -1}]})", "(t).budget_ms: must be a number in (0, 3600000]"},
      {R"({"tiers": [{)" + tier + R"(}, {)" + tier + R"(}]})", "mix.tiers[1].name: duplicate tier 't'"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<Mix> mix = ParseMix(c.json);
    ASSERT_FALSE(mix.ok()) << c.json;
    EXPECT_THAT(std::string(mix.status().message()), HasSubstr(c.message)) << c.json;
  }
  EXPECT_THAT(std::string(LoadMix("/nonexistent/mix.json").status().message()), HasSubstr("--mix=/nonexistent"));
}

}  // namespace
}  // namespace matformer::loadgen
