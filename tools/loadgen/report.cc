#include "tools/loadgen/report.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace matformer::loadgen {
namespace {

std::optional<double> Mean(const std::vector<double>& values) {
  if (values.empty()) return std::nullopt;
  return std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
}

TierReport BuildTier(const std::string& name, const std::vector<const RequestRecord*>& records,
                     double measured_s) {
  TierReport tier;
  tier.tier = name;
  std::vector<double> latencies, first_tokens, params, losses, predicted_ratios, transport;
  for (const RequestRecord* r : records) {
    ++tier.sent;
    tier.budget_s = std::max(tier.budget_s, r->budget_s);
    if (r->status != "OK") {
      ++tier.errors[r->status];
      continue;
    }
    ++tier.ok;
    if (r->latency_s <= r->budget_s) ++tier.within_budget;
    latencies.push_back(r->latency_s);
    if (r->first_token_s.has_value()) first_tokens.push_back(*r->first_token_s);
    if (r->active_params.has_value()) {
      ++tier.active_params[*r->active_params];
      params.push_back(static_cast<double>(*r->active_params));
    }
    if (r->expected_loss.has_value()) losses.push_back(*r->expected_loss);
    if (r->server_total_s.has_value()) {
      transport.push_back(r->latency_s - *r->server_total_s);
      if (r->predicted_total_s.has_value() && *r->server_total_s > 0) {
        predicted_ratios.push_back(*r->predicted_total_s / *r->server_total_s);
      }
    }
  }
  if (tier.sent > 0) tier.attainment = static_cast<double>(tier.within_budget) / static_cast<double>(tier.sent);
  if (measured_s > 0) tier.goodput_rps = static_cast<double>(tier.within_budget) / measured_s;
  tier.latency_s = Summarize(latencies);
  tier.first_token_s = Summarize(first_tokens);
  tier.mean_active_params = Mean(params);
  tier.mean_expected_loss = Mean(losses);
  tier.mean_predicted_over_actual = Mean(predicted_ratios);
  tier.mean_client_minus_server_s = Mean(transport);
  return tier;
}

nlohmann::json SummaryJson(const LatencySummary& s) {
  return {{"count", s.count}, {"p50", s.p50}, {"p90", s.p90}, {"p99", s.p99}, {"max", s.max}, {"mean", s.mean}};
}

template <typename T>
nlohmann::json OptionalJson(const std::optional<T>& value) {
  return value.has_value() ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

nlohmann::json TierJson(const TierReport& t) {
  nlohmann::json params = nlohmann::json::object();
  for (const auto& [size, count] : t.active_params) params[absl::StrCat(size)] = count;
  return {{"tier", t.tier},
          {"budget_s", t.budget_s},
          {"sent", t.sent},
          {"ok", t.ok},
          {"errors", t.errors},
          {"within_budget", t.within_budget},
          {"attainment", t.attainment},
          {"goodput_rps", t.goodput_rps},
          {"latency_s", SummaryJson(t.latency_s)},
          {"first_token_s", SummaryJson(t.first_token_s)},
          {"active_params", params},
          {"mean_active_params", OptionalJson(t.mean_active_params)},
          {"mean_expected_loss", OptionalJson(t.mean_expected_loss)},
          {"mean_predicted_over_actual", OptionalJson(t.mean_predicted_over_actual)},
          {"mean_client_minus_server_s", OptionalJson(t.mean_client_minus_server_s)}};
}

std::string Ms(double seconds) { return absl::StrFormat("%.0f", seconds * 1e3); }

std::string TableRow(const TierReport& t) {
  int64_t errors = 0;
  for (const auto& [code, count] : t.errors) errors += count;
  std::string loss = t.mean_expected_loss.has_value() ? absl::StrFormat("%.4f", *t.mean_expected_loss) : "-";
  std::string params =
      t.mean_active_params.has_value() ? absl::StrFormat("%.2f", *t.mean_active_params / 1e6) : "-";
  return absl::StrFormat("%-12s %7s %6d %6d %6d %7.1f%% %8.2f %6s %6s %6s %6s %6s %6s %7s %8s\n", t.tier,
                         t.budget_s > 0 ? Ms(t.budget_s) : "-", t.sent, t.ok, errors, 100 * t.attainment,
                         t.goodput_rps, Ms(t.latency_s.p50), Ms(t.latency_s.p90), Ms(t.latency_s.p99),
                         Ms(t.latency_s.max), Ms(t.first_token_s.p50), Ms(t.first_token_s.p99), params, loss);
}

}  // namespace

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  // Nearest rank: the smallest value with at least q% of the values <= it.
  const double rank = std::ceil(std::clamp(q, 0.0, 100.0) / 100.0 * static_cast<double>(values.size()));
  const size_t index = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return values[std::min(index, values.size() - 1)];
}

LatencySummary Summarize(const std::vector<double>& values) {
  LatencySummary s;
  s.count = static_cast<int64_t>(values.size());
  if (values.empty()) return s;
  s.p50 = Percentile(values, 50);
  s.p90 = Percentile(values, 90);
  s.p99 = Percentile(values, 99);
  s.max = *std::max_element(values.begin(), values.end());
  s.mean = *Mean(values);
  return s;
}

Report BuildReport(const std::vector<RequestRecord>& records, double measured_s,
                   const std::vector<std::string>& tier_order) {
  Report report;
  report.measured_s = measured_s;
  std::vector<std::string> order = tier_order;
  std::map<std::string, std::vector<const RequestRecord*>> by_tier;
  for (const std::string& name : tier_order) by_tier[name];
  std::vector<const RequestRecord*> all;
  for (const RequestRecord& r : records) {
    if (!by_tier.contains(r.tier)) order.push_back(r.tier);
    by_tier[r.tier].push_back(&r);
    all.push_back(&r);
  }
  for (const std::string& name : order) report.tiers.push_back(BuildTier(name, by_tier[name], measured_s));
  report.total = BuildTier("all", all, measured_s);
  // Tiers have different budgets; the total's "budget" would mislead.
  report.total.budget_s = 0;
  return report;
}

nlohmann::json ToJson(const Report& report) {
  nlohmann::json tiers = nlohmann::json::array();
  for (const TierReport& t : report.tiers) tiers.push_back(TierJson(t));
  return {{"measured_s", report.measured_s}, {"tiers", tiers}, {"total", TierJson(report.total)}};
}

std::string FormatTable(const Report& report) {
  std::string table = absl::StrFormat("%-12s %7s %6s %6s %6s %8s %8s %6s %6s %6s %6s %6s %6s %7s %8s\n", "tier",
                                      "budget", "sent", "ok", "err", "in-SLO", "goodput", "p50", "p90", "p99",
                                      "max", "ttft50", "ttft99", "Mparams", "exp.loss");
  absl::StrAppend(&table, absl::StrFormat("%-12s %7s %6s %6s %6s %8s %8s %6s %6s %6s %6s %6s %6s %7s %8s\n", "",
                                          "ms", "", "", "", "", "req/s", "ms", "ms", "ms", "ms", "ms", "ms",
                                          "mean", "mean"));
  for (const TierReport& t : report.tiers) absl::StrAppend(&table, TableRow(t));
  absl::StrAppend(&table, TableRow(report.total));
  for (const TierReport& t : report.tiers) {
    if (t.errors.empty()) continue;
    std::vector<std::string> parts;
    for (const auto& [code, count] : t.errors) parts.push_back(absl::StrCat(code, " ", count));
    absl::StrAppend(&table, "errors ", t.tier, ": ", absl::StrJoin(parts, ", "), "\n");
  }
  return table;
}

}  // namespace matformer::loadgen
