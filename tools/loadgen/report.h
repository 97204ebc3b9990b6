#ifndef MATFORMER_TOOLS_LOADGEN_REPORT_H_
#define MATFORMER_TOOLS_LOADGEN_REPORT_H_

// The load generator's statistics: per-request records in, a per-tier report
// out (latency percentiles, SLO attainment, goodput, errors by code, the
// submodels the server chose). Pure computation, no gRPC, unit-tested on
// synthetic records.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace matformer::loadgen {

// One finished request, as the client saw it.
struct RequestRecord {
  std::string tier;
  std::string status;                       // gRPC code name: "OK", "DEADLINE_EXCEEDED", ...
  double latency_s = 0;                     // send to final status, client side
  std::optional<double> first_token_s;      // send to first token, if one came
  double budget_s = 0;                      // the budget the request carried
  int tokens = 0;                           // tokens generated
  std::optional<int64_t> active_params;     // the submodel the server chose (OK replies)
  std::optional<double> expected_loss;      // its held-out loss, if the server knows it
  std::optional<double> server_total_s;     // the server's own total, if it replied
  std::optional<double> predicted_total_s;  // the planner's prediction, if it replied
};

// Nearest-rank percentile (q in [0, 100]) of unsorted values; 0 when empty.
double Percentile(std::vector<double> values, double q);

struct LatencySummary {
  int64_t count = 0;
  double p50 = 0, p90 = 0, p99 = 0, max = 0, mean = 0;
};
LatencySummary Summarize(const std::vector<double>& values);

struct TierReport {
  std::string tier;
  double budget_s = 0;  // the largest budget seen for the tier (they are equal in a run)
  int64_t sent = 0;
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;  // by gRPC code name, every status but OK
  int64_t within_budget = 0;              // OK and latency <= budget
  double attainment = 0;                  // within_budget / sent
  double goodput_rps = 0;                 // within_budget / measured seconds
  LatencySummary latency_s;               // of OK replies
  LatencySummary first_token_s;           // of OK replies with a token
  std::map<int64_t, int64_t> active_params;  // chosen submodel size -> OK replies
  std::optional<double> mean_active_params;
  std::optional<double> mean_expected_loss;  // over OK replies whose submodel has a known loss
  std::optional<double> mean_predicted_over_actual;  // planner's predicted total / server's total
  std::optional<double> mean_client_minus_server_s;  // client latency - server total: transport + gRPC
};

struct Report {
  double measured_s = 0;
  std::vector<TierReport> tiers;  // in order of first appearance
  TierReport total;               // every tier together (tier "all")
};

// `measured_s` is the length of the measurement window (warm-up excluded),
// used for goodput. Tiers come in `tier_order` (each listed even without
// requests), then any others in order of first appearance.
Report BuildReport(const std::vector<RequestRecord>& records, double measured_s,
                   const std::vector<std::string>& tier_order = {});

nlohmann::json ToJson(const Report& report);
// A fixed-width table, one line per tier and one for all.
std::string FormatTable(const Report& report);

}  // namespace matformer::loadgen

#endif  // MATFORMER_TOOLS_LOADGEN_REPORT_H_
