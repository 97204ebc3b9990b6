#include "server/metrics.h"

#include <algorithm>
#include <exception>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "server/status_mapping.h"

namespace matformer::server {
namespace {

constexpr absl::string_view kNoTier = "none";
constexpr absl::string_view kUnknownTier = "unknown";

prometheus::Histogram::BucketBoundaries Sorted(std::vector<double> edges) {
  std::sort(edges.begin(), edges.end());
  edges.erase(std::unique(edges.begin(), edges.end()), edges.end());
  return edges;
}

prometheus::Histogram::BucketBoundaries LatencyBuckets(std::optional<absl::Duration> budget) {
  std::vector<double> edges = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  if (budget.has_value()) edges.push_back(absl::ToDoubleSeconds(*budget));
  return Sorted(std::move(edges));
}

prometheus::Histogram::BucketBoundaries InterTokenBuckets() {
  return {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1};
}

}  // namespace

// Brings the gauges up to date right before the registry is read, so a
// scrape sees the KV pool and caches as they are now.
class ServerMetrics::ScrapeRefresher : public prometheus::Collectable {
 public:
  ScrapeRefresher(std::shared_ptr<prometheus::Registry> registry, std::function<void()> refresh)
      : registry_(std::move(registry)), refresh_(std::move(refresh)) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    refresh_();
    return registry_->Collect();
  }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::function<void()> refresh_;
};

ServerMetrics::ServerMetrics(const std::vector<Tier>& tiers, const std::vector<int64_t>& candidate_active_params)
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("matformer_requests_total")
                    .Help("Finished RPCs by method, tier and gRPC status code")
                    .Register(*registry_)),
      time_to_first_token_(prometheus::BuildHistogram()
                               .Name("matformer_time_to_first_token_seconds")
                               .Help("Arrival to the first generated token, successful requests")
                               .Register(*registry_)),
      inter_token_(prometheus::BuildHistogram()
                       .Name("matformer_inter_token_latency_seconds")
                       .Help("Time between consecutive generated tokens of a request")
                       .Register(*registry_)),
      end_to_end_(prometheus::BuildHistogram()
                      .Name("matformer_request_latency_seconds")
                      .Help("Arrival to completion, successful requests")
                      .Register(*registry_)),
      queue_(prometheus::BuildHistogram()
                 .Name("matformer_queue_time_seconds")
                 .Help("Arrival to the start of prefill, successful requests")
                 .Register(*registry_)),
      active_params_(prometheus::BuildHistogram()
                         .Name("matformer_active_params")
                         .Help("Active parameters of the submodel each successful request ran on")
                         .Register(*registry_)),
      slo_met_(prometheus::BuildCounter()
                   .Name("matformer_slo_met_total")
                   .Help("Requests with a latency budget that succeeded within it")
                   .Register(*registry_)),
      slo_missed_(prometheus::BuildCounter()
                      .Name("matformer_slo_missed_total")
                      .Help("Requests with a latency budget that failed or finished past it (client "
                            "cancellations excluded)")
                      .Register(*registry_)),
      batch_rows_(prometheus::BuildHistogram()
                      .Name("matformer_batch_rows")
                      .Help("Token rows per engine step (prefill chunk tokens plus decode rows)")
                      .Register(*registry_)
                      .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256, 512})),
      step_duration_(prometheus::BuildHistogram()
                         .Name("matformer_step_duration_seconds")
                         .Help("Duration of one engine step")
                         .Register(*registry_)
                         .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
                                                                          0.2, 0.5, 1, 2})),
      kv_blocks_in_use_(prometheus::BuildGauge()
                            .Name("matformer_kv_blocks_in_use")
                            .Help("KV cache blocks held by sequences")
                            .Register(*registry_)
                            .Add({})),
      kv_blocks_total_(prometheus::BuildGauge()
                           .Name("matformer_kv_blocks_total")
                           .Help("KV cache blocks in the pool")
                           .Register(*registry_)
                           .Add({})),
      requests_running_(prometheus::BuildGauge()
                            .Name("matformer_requests_running")
                            .Help("Requests in the running batch")
                            .Register(*registry_)
                            .Add({})),
      requests_queued_(prometheus::BuildGauge()
                           .Name("matformer_requests_queued")
                           .Help("Requests admitted and waiting for a batch slot")
                           .Register(*registry_)
                           .Add({})),
      ple_hits_(prometheus::BuildGauge()
                    .Name("matformer_ple_cache_hits")
                    .Help("PLE cache lookups that hit, since start")
                    .Register(*registry_)
                    .Add({})),
      ple_misses_(prometheus::BuildGauge()
                      .Name("matformer_ple_cache_misses")
                      .Help("PLE cache lookups that missed, since start")
                      .Register(*registry_)
                      .Add({})),
      ple_bytes_(prometheus::BuildGauge()
                     .Name("matformer_ple_cache_bytes")
                     .Help("Bytes of per-layer embeddings held in the PLE cache")
                     .Register(*registry_)
                     .Add({})),
      ple_entries_(prometheus::BuildGauge()
                       .Name("matformer_ple_cache_entries")
                       .Help("Tokens whose per-layer embeddings are cached")
                       .Register(*registry_)
                       .Add({})) {
  auto& correction = prometheus::BuildGauge()
                         .Name("matformer_planner_correction")
                         .Help("The planner's online corrections: step = observed / predicted engine step time; "
                               "request_mean and request_deviation = EWMA of observed / predicted request time "
                               "and its mean deviation (budgets are checked against mean + 2 deviations)")
                         .Register(*registry_);
  step_correction_ = &correction.Add({{"kind", "step"}});
  request_correction_mean_ = &correction.Add({{"kind", "request_mean"}});
  request_correction_deviation_ = &correction.Add({{"kind", "request_deviation"}});
  std::vector<double> param_edges(candidate_active_params.begin(), candidate_active_params.end());
  const prometheus::Histogram::BucketBoundaries param_buckets = Sorted(std::move(param_edges));
  auto add_tier = [&](absl::string_view label, std::optional<absl::Duration> budget) {
    const prometheus::Labels labels = {{"tier", std::string(label)}};
    tiers_.emplace(std::string(label),
                   TierMetrics{.time_to_first_token = &time_to_first_token_.Add(labels, LatencyBuckets(budget)),
                               .inter_token = &inter_token_.Add(labels, InterTokenBuckets()),
                               .end_to_end = &end_to_end_.Add(labels, LatencyBuckets(budget)),
                               .queue = &queue_.Add(labels, LatencyBuckets(budget)),
                               .active_params = &active_params_.Add(labels, param_buckets),
                               .slo_met = &slo_met_.Add(labels),
                               .slo_missed = &slo_missed_.Add(labels)});
  };
  add_tier(kNoTier, std::nullopt);
  for (const Tier& tier : tiers) add_tier(tier.name, tier.budget);
}

ServerMetrics::~ServerMetrics() = default;

absl::StatusOr<int> ServerMetrics::Serve(const std::string& host, int port, std::function<void()> refresh) {
  const std::string address = absl::StrCat(host, ":", port);
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/1);
  } catch (const std::exception& error) {
    return absl::UnavailableError(absl::StrCat("metrics endpoint: cannot listen on ", address, ": ", error.what()));
  }
  refresher_ = std::make_shared<ScrapeRefresher>(registry_, std::move(refresh));
  exposer_->RegisterCollectable(refresher_);
  const std::vector<int> ports = exposer_->GetListeningPorts();
  if (ports.empty()) return absl::InternalError(absl::StrCat("metrics endpoint: no port bound for ", address));
  return ports.front();
}

std::string ServerMetrics::TierLabel(absl::string_view tier) const {
  if (tier.empty()) return std::string(kNoTier);
  if (tiers_.find(tier) != tiers_.end() && tier != kNoTier) return std::string(tier);
  return std::string(kUnknownTier);
}

ServerMetrics::TierMetrics& ServerMetrics::ForTier(absl::string_view tier) {
  // Completed requests passed validation: their tier is empty or known.
  auto it = tiers_.find(tier.empty() ? kNoTier : tier);
  return it != tiers_.end() ? it->second : tiers_.find(kNoTier)->second;
}

void ServerMetrics::RecordRequest(absl::string_view method, absl::string_view tier, grpc::StatusCode code) {
  requests_.Add({{"method", std::string(method)}, {"tier", TierLabel(tier)}, {"code", GrpcCodeName(code)}}).Increment();
}

void ServerMetrics::RecordCompletion(absl::string_view tier, const SchedulerResult& result,
                                     const ResolvedBudget& budget) {
  TierMetrics& metrics = ForTier(tier);
  if (result.status.ok()) {
    if (result.timings.time_to_first_token > absl::ZeroDuration()) {
      metrics.time_to_first_token->Observe(absl::ToDoubleSeconds(result.timings.time_to_first_token));
    }
    metrics.end_to_end->Observe(absl::ToDoubleSeconds(result.timings.total));
    metrics.queue->Observe(absl::ToDoubleSeconds(result.timings.queue));
    metrics.active_params->Observe(static_cast<double>(result.plan.choice.spec.active_params()));
  }
  if (budget.budget.has_value() && !absl::IsCancelled(result.status)) {
    if (result.status.ok() && result.timings.total <= *budget.budget) {
      metrics.slo_met->Increment();
    } else {
      metrics.slo_missed->Increment();
    }
  }
}

void ServerMetrics::RecordInterToken(absl::string_view tier, absl::Duration gap, int tokens) {
  if (tokens <= 0) return;
  const double per_token = absl::ToDoubleSeconds(gap) / tokens;
  prometheus::Histogram* histogram = ForTier(tier).inter_token;
  for (int i = 0; i < tokens; ++i) histogram->Observe(per_token);
}

void ServerMetrics::RecordStep(int rows, absl::Duration duration) {
  batch_rows_.Observe(rows);
  step_duration_.Observe(absl::ToDoubleSeconds(duration));
}

void ServerMetrics::SetGauges(const SchedulerStats& scheduler, const PleCache::Stats& ple, double step_correction,
                              const RequestCorrection::Factors& request) {
  step_correction_->Set(step_correction);
  request_correction_mean_->Set(request.mean);
  request_correction_deviation_->Set(request.deviation);
  kv_blocks_in_use_.Set(static_cast<double>(scheduler.kv_blocks_used));
  kv_blocks_total_.Set(static_cast<double>(scheduler.kv_blocks_total));
  requests_running_.Set(scheduler.running);
  requests_queued_.Set(scheduler.queued);
  ple_hits_.Set(static_cast<double>(ple.hits));
  ple_misses_.Set(static_cast<double>(ple.misses));
  ple_bytes_.Set(static_cast<double>(ple.bytes));
  ple_entries_.Set(static_cast<double>(ple.entries));
}

}  // namespace matformer::server
