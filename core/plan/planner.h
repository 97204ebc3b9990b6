#ifndef MATFORMER_CORE_PLAN_PLANNER_H_
#define MATFORMER_CORE_PLAN_PLANNER_H_

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/serving_engine.h"
#include "core/model/submodel.h"

namespace matformer {

// A submodel the planner may choose, with its expected quality.
struct Candidate {
  SubmodelSpec spec;
  double expected_loss = 0.0;  // from the quality table (held-out loss, or 1 - MMLU); lower is better
  bool measured = false;       // false: no quality table entry, ranked by active parameters
  std::string label;           // the quality table's name for it, if any
};

// Reads <model_dir>/quality.json ({"specs": [{"name", "loss", ...}]}); without
// the file, the candidates are the uniform granularities ranked by size.
// Returns candidates sorted best quality first.
absl::StatusOr<std::vector<Candidate>> LoadCandidates(const ModelConfig& config, const std::string& model_dir);

// Predicts how long engine steps take. Per granularity g, a step over `rows`
// rows costs fixed_g + per_row_g * rows (weights streamed once per step, plus
// compute per row); a spec mixes its layers' granularities in proportion. The
// fit comes from a calibration at start-up and is corrected online by an
// EWMA of observed / predicted step times.
class LatencyModel {
 public:
  // Times real engine steps for every granularity at a few row counts
  // (a few seconds on the default model).
  static absl::StatusOr<LatencyModel> Calibrate(ServingEngine& engine);
  // For tests: explicit coefficients, seconds.
  LatencyModel(std::vector<double> fixed_seconds, std::vector<double> per_row_seconds, int num_layers);
  LatencyModel(const LatencyModel& other);

  // Predicted duration of one step over rows of these specs (one entry per
  // row), with the online correction applied.
  absl::Duration StepTime(const std::vector<const SubmodelSpec*>& row_specs, const ModelConfig& config) const;
  // Feeds an observed step back (its prediction before correction is recomputed).
  void Observe(const std::vector<const SubmodelSpec*>& row_specs, const ModelConfig& config, absl::Duration actual);
  double correction() const;
  // The fitted coefficients, for the start-up log.
  std::string Describe(const ModelConfig& config) const;
  // A saved model, to skip calibration at start-up or to plan reproducibly:
  // {"granularities": {"<name>": {"fixed_ms": F, "per_row_ms": R}, ...}}
  // with every granularity of the model.
  static absl::StatusOr<LatencyModel> Load(const ModelConfig& config, const std::string& path);
  absl::Status Save(const ModelConfig& config, const std::string& path) const;
  // Whether Observe() corrects predictions (on by default).
  void set_learning(bool learning) { learning_ = learning; }

 private:
  double RawSeconds(const std::vector<const SubmodelSpec*>& row_specs, const ModelConfig& config) const;
  std::vector<double> fixed_, per_row_;  // per granularity index
  int num_layers_;
  bool learning_ = true;
  mutable std::mutex mutex_;  // std::mutex: visible to ThreadSanitizer (scheduler.h says why)
  double correction_ ABSL_GUARDED_BY(mutex_) = 1.0;
};

// A request already admitted (running, or next in line for a batch slot)
// with a latency budget: what a newcomer must not push past that budget.
struct Commitment {
  absl::Duration time_left;  // until its arrival + budget
  int remaining_steps = 0;   // prefill chunks + decode steps still to run
};

// What the scheduler tells the planner about the current load.
struct LoadSnapshot {
  std::vector<const SubmodelSpec*> decode_rows;  // one per running sequence
  std::vector<Commitment> commitments;           // of those rows that have a budget
  int queued_requests = 0;                       // admitted, waiting for a batch slot
  int64_t queued_prefill_tokens = 0;
  absl::Duration queue_wait = absl::ZeroDuration();  // estimate for a new request
};

struct PlanRequest {
  int64_t prompt_tokens = 0;
  int max_new_tokens = 0;
  std::optional<absl::Duration> budget;          // none: no limit, pick the best quality
  std::optional<SubmodelSpec> pinned;            // a spec fixed by the client
  std::optional<double> max_expected_loss;       // quality floor
};

// The planner's prediction for one request. The parts are the step model's
// prediction times `request_scale`, the whole-request correction at planning
// time (see RequestCorrection).
struct Plan {
  Candidate choice;
  absl::Duration predicted_queue;
  absl::Duration predicted_prefill;
  absl::Duration predicted_decode;
  absl::Duration predicted_total() const { return predicted_queue + predicted_prefill + predicted_decode; }
  double request_scale = 1.0;
  bool fits_budget = true;  // with the correction's conservative margin
};

// What the step model cannot see when a request is planned: prefill chunks of
// requests that arrive later and join its steps, per-step work outside
// Engine::Step (sampling, detokenizing, streaming), and error in the queue
// wait. Learnt from finished requests as an EWMA of actual / predicted time and
// of its mean deviation. Predictions are scaled by the mean; the budget check
// uses mean + kDeviations deviations, so that most requests, not the average
// one, finish in budget (the way TCP sizes its retransmission timeout).
class RequestCorrection {
 public:
  static constexpr double kDeviations = 2.0;
  struct Factors {
    double mean = 1.0;       // scales the predictions
    double deviation = 0.1;  // mean absolute deviation of actual / predicted
    double conservative() const { return mean + kDeviations * deviation; }
  };
  Factors factors() const;
  // `uncorrected` is the step model's prediction for the work the request
  // really did (its generated tokens, not max_new_tokens).
  void Observe(absl::Duration uncorrected, absl::Duration actual);
  // Whether Observe() learns (on by default).
  void set_learning(bool learning) { learning_ = learning; }

 private:
  bool learning_ = true;
  mutable std::mutex mutex_;  // std::mutex: visible to ThreadSanitizer (scheduler.h says why)
  Factors factors_ ABSL_GUARDED_BY(mutex_);
};

enum class PlanPolicy { kElastic, kFixed };
enum class OverBudget { kReject, kServeSmallest };

// Chooses, per request, the best-quality candidate whose predicted completion
// fits the request's budget at the current load and that does not push an
// admitted request past its own budget (the rows a newcomer adds slow every
// step it shares). When every candidate that fits would do that, the fastest
// one that fits is served: a loose budget does not buy the right to break a
// tight one.
class Planner {
 public:
  Planner(const ModelConfig& config, std::vector<Candidate> candidates, LatencyModel latency, PlanPolicy policy,
          std::optional<SubmodelSpec> fixed_spec, OverBudget over_budget, int prefill_chunk);

  // ResourceExhausted (policy reject) when even the fastest candidate's
  // expected time exceeds the budget, with its prediction in the message; InvalidArgument when the
  // quality floor excludes every candidate.
  absl::StatusOr<Plan> Choose(const PlanRequest& request, const LoadSnapshot& load) const;
  absl::Duration PredictTotal(const SubmodelSpec& spec, const PlanRequest& request, const LoadSnapshot& load) const;
  // Whether serving `spec` keeps every commitment of `load` that can still be
  // kept inside its budget (with the correction's conservative factor).
  bool KeepsCommitments(const SubmodelSpec& spec, const PlanRequest& request, const LoadSnapshot& load) const;

  LatencyModel& latency() { return latency_; }
  RequestCorrection& correction() { return correction_; }
  const std::vector<Candidate>& candidates() const { return candidates_; }
  PlanPolicy policy() const { return policy_; }

 private:
  const ModelConfig& config_;
  std::vector<Candidate> candidates_;  // best quality first
  LatencyModel latency_;
  RequestCorrection correction_;
  PlanPolicy policy_;
  std::optional<SubmodelSpec> fixed_spec_;
  OverBudget over_budget_;
  int prefill_chunk_;
};

}  // namespace matformer

#endif  // MATFORMER_CORE_PLAN_PLANNER_H_
