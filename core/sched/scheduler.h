#ifndef MATFORMER_CORE_SCHED_SCHEDULER_H_
#define MATFORMER_CORE_SCHED_SCHEDULER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/serving_engine.h"
#include "core/generate.h"
#include "core/plan/planner.h"
#include "core/sampler.h"

namespace matformer {

// One generation or scoring request as the scheduler sees it: already
// tokenized and with its budget resolved (explicit, tier, or deadline).
struct SchedulerRequest {
  std::vector<int32_t> prompt;
  // Scoring: the continuation whose log-likelihood is wanted (no generation).
  std::vector<int32_t> continuation;
  SamplingParams sampling;
  int max_new_tokens = 16;
  std::vector<std::string> stop_sequences;

  std::string tier;                          // for metrics and logs
  int priority = 0;                          // higher is served first
  std::optional<absl::Duration> budget;      // planner target
  std::optional<absl::Time> deadline;        // hard: past it the request fails
  std::optional<SubmodelSpec> pinned_spec;
  std::optional<double> max_expected_loss;
};

struct Timings {
  absl::Duration queue, time_to_first_token, decode, total, predicted_total;
};

struct SchedulerResult {
  absl::Status status;  // OK, or why the request ended early (cancelled, deadline, KV exhausted)
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason finish_reason = FinishReason::kLength;
  std::vector<double> continuation_logprobs;  // scoring only, one per continuation token
  Plan plan;
  Timings timings;
};

// Called on the scheduler thread: keep them short (queue a write, signal).
struct RequestCallbacks {
  // New text (already held back where it might become a stop sequence) and its token ids.
  std::function<void(const std::vector<int32_t>& tokens, const std::string& text_delta)> on_tokens;
  std::function<void(const SchedulerResult& result)> on_done;  // exactly once
};

// OpenMP threads the engine's steps use on the calling thread (0: OpenMP's
// default, every core). The scheduler sets its own thread's from
// SchedulerOptions::engine_threads; a caller that calibrates on its own
// thread sets that thread's the same way, so that calibration and serving run
// alike.
void SetEngineThreads(int threads);
// Every core but one, which is left to the server's network threads (at least
// one): one less than OpenMP's thread count (OMP_NUM_THREADS, else the CPUs
// this process may run on), itself capped by a cgroup v2 CPU quota. Measured on 2 cores at 16 req/s (bench/README.md): 2.0 ms per step
// with one engine thread, 6-8 ms with two, whose spinning workers took the
// CPU the gRPC threads and the clients needed.
int DefaultEngineThreads();

struct SchedulerOptions {
  int engine_threads = 0;         // see SetEngineThreads; 0: OpenMP's default
  int max_batch_sequences = 32;   // sequences in one engine step
  int max_queue = 256;            // admitted but not yet running; beyond: ResourceExhausted
  int prefill_chunk = 256;        // prompt tokens per sequence per step
  int max_step_tokens = 512;      // all rows of one step
};

// Earliest-deadline composition of a step's decode rows. Rows are taken most
// urgent first (least time per remaining step); a row joins only if the step,
// with it, still fits the time per step that every urgent row already in it
// can afford (with the planner's margin). The first row always joins, and so
// does a row left out kMaxSkippedSteps steps in a row.
inline constexpr int kMaxSkippedSteps = 64;
struct DecodeCandidate {
  absl::Duration time_per_step;  // infinite without a budget
  const SubmodelSpec* spec;
  int skipped_steps = 0;
};
struct DecodeStep {
  std::vector<size_t> rows;  // indices into the candidates, in the order they joined
  // The longest step the joined rows can afford: prefill chunks must fit it too.
  absl::Duration allowance = absl::InfiniteDuration();
};
DecodeStep ComposeDecodeStep(const std::vector<DecodeCandidate>& candidates, const LatencyModel& latency,
                             const ModelConfig& config, double margin);

// Handle to a submitted request; Cancel() is safe from any thread and takes
// effect within one engine step (its KV blocks are freed then).
class RequestHandle {
 public:
  void Cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  const Plan& plan() const { return plan_; }

 private:
  friend class Scheduler;
  std::atomic<bool> cancelled_{false};
  Plan plan_;
};

struct SchedulerStats {
  int running = 0;
  int queued = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  uint64_t steps = 0;
  // About when the next running request finishes (a request's typical service
  // time over the requests running): the retry hint for refused requests.
  absl::Duration next_completion = absl::ZeroDuration();
};

// Continuous batching over one Engine: requests join between steps, prefill
// chunks and decode rows of any submodels share each step, priority by tier
// then earliest deadline. One thread drives the engine.
class Scheduler {
 public:
  // Observes every engine step (rows, duration): metrics hook.
  using StepObserver = std::function<void(int rows, absl::Duration duration)>;

  Scheduler(ServingEngine* engine, Planner* planner, const SchedulerOptions& options);
  ~Scheduler();  // stops the thread; pending requests end with Unavailable

  // Validates and plans at once: InvalidArgument for bad fields,
  // ResourceExhausted when the queue is full or no submodel fits the budget,
  // Unavailable while draining. Otherwise the request is queued and its
  // callbacks run later.
  absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(SchedulerRequest request, RequestCallbacks callbacks);

  // Stops admitting: from its return on, Submit returns Unavailable. A server
  // calls it before it tells health checkers it is not serving, so nothing
  // that saw NOT_SERVING can still be admitted.
  void StopAdmitting();
  // Stops admitting and waits up to `timeout` for running and queued
  // requests to finish; the rest are cancelled.
  void Drain(absl::Duration timeout);

  SchedulerStats stats() const;
  // Not synchronized with the scheduler thread: set it before the first Submit.
  void set_step_observer(StepObserver observer) { step_observer_ = std::move(observer); }

 private:
  struct Active;
  // What the planner needs of each admitted request, republished every step.
  struct RunningRow {
    SubmodelSpec spec;
    std::optional<absl::Time> target;  // arrival + budget
    int remaining_steps = 0;
  };
  void Loop();
  bool RunOneStep();
  void Admit();
  bool Accept(Active& active, absl::Span<const float> logits);
  void EmitText(Active& active, bool final);
  void Finish(std::unique_ptr<Active> active, absl::Status status);
  void Compact();
  void PublishRunningRows();
  // Prefill chunks + decode steps the request still has to run.
  int RemainingSteps(const Active& active) const;
  RunningRow Describe(const Active& active) const;
  LoadSnapshot Load() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Earliest-deadline step composition and SLO-aware chunked prefill: the
  // time per step a request with a budget can afford (its time left over its
  // steps left; infinite without a budget), and the largest prefill chunk that
  // keeps a step within what the rows in it can afford.
  absl::Duration TimePerRemainingStep(const Active& active, absl::Time now) const;
  int64_t FitChunk(int64_t chunk, const SubmodelSpec& spec, const std::vector<const SubmodelSpec*>& rows,
                   absl::Duration allowance) const;

  ServingEngine* engine_;
  Planner* planner_;
  SchedulerOptions options_;
  StepObserver step_observer_;

  // std::mutex rather than absl::Mutex: ThreadSanitizer cannot see into
  // Debian's prebuilt (uninstrumented) Abseil, and the TSan build checks the
  // scheduler. `changed_` is notified whenever a waited-on state changes.
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::unique_ptr<Active>> queue_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::unique_ptr<Active>> running_;  // scheduler thread only
  int running_count_ ABSL_GUARDED_BY(mutex_) = 0;
  // Copies: they outlive a finishing request.
  std::vector<RunningRow> running_rows_ ABSL_GUARDED_BY(mutex_);
  bool draining_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  uint64_t next_order_ ABSL_GUARDED_BY(mutex_) = 0;
  // EWMA of a request's time from admission to completion (seconds).
  double service_seconds_ ABSL_GUARDED_BY(mutex_) = 0.0;
  std::atomic<bool> cancel_running_{false};
  uint64_t steps_ ABSL_GUARDED_BY(mutex_) = 0;
  std::thread thread_;
};

}  // namespace matformer

#endif  // MATFORMER_CORE_SCHED_SCHEDULER_H_
