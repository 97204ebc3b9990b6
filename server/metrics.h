#ifndef MATFORMER_SERVER_METRICS_H_
#define MATFORMER_SERVER_METRICS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/plan/planner.h"
#include "core/ple/ple_cache.h"
#include "core/sched/scheduler.h"
#include "grpcpp/support/status.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/budget.h"
#include "server/tiers.h"

namespace matformer::server {

// The server's Prometheus metrics (all named matformer_*) and their HTTP
// endpoint. Thread-safe: requests record from gRPC and scheduler threads.
class ServerMetrics {
 public:
  // Latency histograms get a bucket edge at each tier's budget, so "within
  // budget" is exact; the active-params histogram gets one at each candidate's size.
  ServerMetrics(const std::vector<Tier>& tiers, const std::vector<int64_t>& candidate_active_params);
  ~ServerMetrics();

  // Serves GET /metrics on host:port (0 picks a free port) and returns the
  // bound port. `refresh` runs before every scrape (it calls SetGauges).
  absl::StatusOr<int> Serve(const std::string& host, int port, std::function<void()> refresh);

  // One finished RPC of `method` ("Generate", ...), by tier and gRPC code.
  void RecordRequest(absl::string_view method, absl::string_view tier, grpc::StatusCode code);
  // A request the scheduler completed (any status): latencies, the submodel
  // size chosen, and whether it met its budget.
  void RecordCompletion(absl::string_view tier, const SchedulerResult& result, const ResolvedBudget& budget);
  // Time between two consecutive token deliveries of one request.
  void RecordInterToken(absl::string_view tier, absl::Duration gap, int tokens);
  // One engine step (the scheduler's step observer).
  void RecordStep(int rows, absl::Duration duration);
  // `step_correction` and `request` are the planner's online corrections
  // (LatencyModel::correction, RequestCorrection::factors).
  void SetGauges(const SchedulerStats& scheduler, const PleCache::Stats& ple, double step_correction,
                 const RequestCorrection::Factors& request);

 private:
  struct TierMetrics {
    prometheus::Histogram* time_to_first_token;
    prometheus::Histogram* inter_token;
    prometheus::Histogram* end_to_end;
    prometheus::Histogram* queue;
    prometheus::Histogram* active_params;
    prometheus::Counter* slo_met;
    prometheus::Counter* slo_missed;
  };
  class ScrapeRefresher;

  // A label for a client-supplied tier: known tiers as themselves, the rest
  // collapsed so clients cannot create unbounded label sets.
  std::string TierLabel(absl::string_view tier) const;
  TierMetrics& ForTier(absl::string_view tier);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& time_to_first_token_;
  prometheus::Family<prometheus::Histogram>& inter_token_;
  prometheus::Family<prometheus::Histogram>& end_to_end_;
  prometheus::Family<prometheus::Histogram>& queue_;
  prometheus::Family<prometheus::Histogram>& active_params_;
  prometheus::Family<prometheus::Counter>& slo_met_;
  prometheus::Family<prometheus::Counter>& slo_missed_;
  prometheus::Histogram& batch_rows_;
  prometheus::Histogram& step_duration_;
  prometheus::Gauge& kv_blocks_in_use_;
  prometheus::Gauge& kv_blocks_total_;
  prometheus::Gauge& requests_running_;
  prometheus::Gauge& requests_queued_;
  prometheus::Gauge& ple_hits_;
  prometheus::Gauge& ple_misses_;
  prometheus::Gauge& ple_bytes_;
  prometheus::Gauge& ple_entries_;
  prometheus::Gauge* step_correction_;
  prometheus::Gauge* request_correction_mean_;
  prometheus::Gauge* request_correction_deviation_;
  std::map<std::string, TierMetrics, std::less<>> tiers_;  // by label; fixed after construction
  std::shared_ptr<ScrapeRefresher> refresher_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_METRICS_H_
