#include "core/sched/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <numeric>

#include <omp.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace matformer {
namespace {

constexpr absl::string_view kReplacementCharacter = "\xEF\xBF\xBD";
// Prefill tokens a step takes of one prompt even when decode rows with tight
// budgets would rather it took none.
constexpr int64_t kMinPrefillChunk = 16;

absl::Time Now() { return absl::Now(); }

}  // namespace

// A request from admission to completion. Owned by the queue, then by the
// scheduler thread's running set.
struct Scheduler::Active {
  SchedulerRequest request;
  RequestCallbacks callbacks;
  std::shared_ptr<RequestHandle> handle;
  uint64_t order = 0;  // arrival order, the last tie-break
  absl::Time arrival, admitted, first_token;

  std::unique_ptr<Sequence> sequence;
  std::vector<int32_t> feed;  // prompt (+ continuation when scoring)
  size_t fed = 0;             // tokens of `feed` already in the KV cache
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<StopMatcher> stops;
  int32_t next_token = -1;  // sampled last step, fed next step
  SchedulerResult result;
  size_t text_emitted = 0;
  size_t tokens_emitted = 0;
  bool done = false;
  int skipped_steps = 0;  // consecutive steps this decoding request was left out of

  bool scoring() const { return !request.continuation.empty(); }
  const SubmodelSpec& spec() const { return handle->plan().choice.spec; }
};

void SetEngineThreads(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
}

int DefaultEngineThreads() {
  // OpenMP's own count: OMP_NUM_THREADS, else the CPUs this process may run on...
  int64_t cpus = omp_get_max_threads();
  // ...capped by a container's CPU quota (cgroup v2 cpu.max: "<quota> <period>"
  // or "max <period>"), which OpenMP does not see.
  std::ifstream cpu_max("/sys/fs/cgroup/cpu.max");
  std::string quota;
  int64_t period = 0, quota_us = 0;
  if (cpu_max >> quota >> period && period > 0 && absl::SimpleAtoi(quota, &quota_us) && quota_us > 0) {
    cpus = std::min(cpus, (quota_us + period - 1) / period);
  }
  return static_cast<int>(std::max<int64_t>(1, cpus - 1));
}

Scheduler::Scheduler(ServingEngine* engine, Planner* planner, const SchedulerOptions& options)
    : engine_(engine), planner_(planner), options_(options) {
  // From here on the engine runs on the scheduler's thread. libgomp keeps a
  // pool of OpenMP threads per thread that ever ran a parallel region (here:
  // the caller's, from loading and calibration), and once it manages more
  // threads than there are CPUs its workers stop spinning between regions and
  // sleep: every region then pays a futex wake-up. Measured on the default
  // model: 5.4 ms per 1-row XL step in the server against 0.5 ms calibrated
  // before the scheduler existed. Releasing the caller's pool keeps one pool.
  omp_pause_resource_all(omp_pause_hard);
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

int Scheduler::RemainingSteps(const Active& active) const {
  const int64_t prefill_left = static_cast<int64_t>(
      active.feed.empty() ? active.request.prompt.size() + active.request.continuation.size()
                          : active.feed.size() - active.fed);
  const int64_t decode_left =
      active.scoring() ? 0 : active.request.max_new_tokens - static_cast<int64_t>(active.result.tokens.size());
  return static_cast<int>((prefill_left + options_.prefill_chunk - 1) / options_.prefill_chunk +
                          std::max<int64_t>(0, decode_left - 1));
}

Scheduler::RunningRow Scheduler::Describe(const Active& active) const {
  RunningRow row{.spec = active.spec(), .target = std::nullopt, .remaining_steps = RemainingSteps(active)};
  if (active.request.budget.has_value()) row.target = active.arrival + *active.request.budget;
  return row;
}

DecodeStep ComposeDecodeStep(const std::vector<DecodeCandidate>& candidates, const LatencyModel& latency,
                             const ModelConfig& config, double margin) {
  std::vector<size_t> order(candidates.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return candidates[a].time_per_step < candidates[b].time_per_step;
  });
  DecodeStep step;
  std::vector<const SubmodelSpec*> rows;
  for (size_t index : order) {
    const DecodeCandidate& candidate = candidates[index];
    // A row that is late even alone cannot be saved: it does not limit others.
    const absl::Duration alone = latency.StepTime({candidate.spec}, config) * margin;
    const absl::Duration allowance = candidate.time_per_step >= alone
                                         ? std::min(step.allowance, candidate.time_per_step)
                                         : step.allowance;
    rows.push_back(candidate.spec);
    const bool forced = step.rows.empty() || candidate.skipped_steps >= kMaxSkippedSteps;
    if (!forced && latency.StepTime(rows, config) * margin > allowance) {
      rows.pop_back();
      continue;
    }
    step.rows.push_back(index);
    step.allowance = allowance;
  }
  return step;
}

absl::Duration Scheduler::TimePerRemainingStep(const Active& active, absl::Time now) const {
  if (!active.request.budget.has_value()) return absl::InfiniteDuration();
  const int remaining = std::max(1, RemainingSteps(active));
  return (active.arrival + *active.request.budget - now) / remaining;
}

int64_t Scheduler::FitChunk(int64_t chunk, const SubmodelSpec& spec, const std::vector<const SubmodelSpec*>& rows,
                            absl::Duration allowance) const {
  if (allowance == absl::InfiniteDuration()) return chunk;
  const double margin = planner_->correction().factors().conservative();
  auto fits = [&](int64_t tokens) {
    std::vector<const SubmodelSpec*> step = rows;
    step.insert(step.end(), tokens, &spec);
    return planner_->latency().StepTime(step, engine_->config()) * margin <= allowance;
  };
  if (fits(chunk)) return chunk;
  // The largest chunk that fits, but never below the floor: prompts still progress.
  int64_t lo = std::min<int64_t>(chunk, kMinPrefillChunk), hi = chunk;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (fits(mid)) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

LoadSnapshot Scheduler::Load() const {
  LoadSnapshot load;
  const absl::Time now = Now();
  auto add = [&](const SubmodelSpec& spec, const RunningRow& row) {
    load.decode_rows.push_back(&spec);
    if (row.target.has_value()) {
      load.commitments.push_back({.time_left = *row.target - now, .remaining_steps = row.remaining_steps});
    }
  };
  for (const RunningRow& row : running_rows_) add(row.spec, row);
  const int free_slots = options_.max_batch_sequences - running_count_;
  for (const auto& queued : queue_) {
    if (static_cast<int>(load.decode_rows.size()) >= options_.max_batch_sequences) break;
    add(queued->spec(), Describe(*queued));
  }
  load.queued_requests = static_cast<int>(queue_.size());
  // A newcomer waits for batch slots: each wave of max_batch requests ahead
  // of it costs about one request's service time.
  const int ahead = load.queued_requests + 1 - free_slots;
  if (ahead > 0) {
    const int waves = (ahead + options_.max_batch_sequences - 1) / options_.max_batch_sequences;
    load.queue_wait = absl::Seconds(service_seconds_ * waves);
  }
  return load;
}

absl::StatusOr<std::shared_ptr<RequestHandle>> Scheduler::Submit(SchedulerRequest request,
                                                                 RequestCallbacks callbacks) {
  const ModelConfig& config = engine_->config();
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: empty (at least one token)");
  for (const std::vector<int32_t>* tokens : {&request.prompt, &request.continuation}) {
    for (int32_t token : *tokens) {
      if (token < 0 || token >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", token, " outside [0, ", config.vocab_size, ")"));
      }
    }
  }
  const bool scoring = !request.continuation.empty();
  if (!scoring && request.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens = ", request.max_new_tokens, " must be >= 1"));
  }
  const int64_t length = static_cast<int64_t>(request.prompt.size() + request.continuation.size()) +
                         (scoring ? 0 : request.max_new_tokens);
  if (length > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt + ", scoring ? "continuation" : "max_new_tokens", " = ",
                                                   length, " tokens exceeds the model's max_position_embeddings ",
                                                   config.max_position_embeddings));
  }
  MF_RETURN_IF_ERROR(ValidateSamplingParams(request.sampling, config.vocab_size));
  for (const std::string& stop : request.stop_sequences) {
    if (stop.empty()) return absl::InvalidArgumentError("stop_sequences: an entry is empty");
  }
  if (request.pinned_spec.has_value()) MF_RETURN_IF_ERROR(engine_->ValidateSpec(*request.pinned_spec));

  auto active = std::make_unique<Active>();
  active->arrival = Now();
  PlanRequest plan_request{.prompt_tokens = static_cast<int64_t>(request.prompt.size() + request.continuation.size()),
                           .max_new_tokens = scoring ? 1 : request.max_new_tokens,
                           .budget = request.budget,
                           .pinned = request.pinned_spec,
                           .max_expected_loss = request.max_expected_loss};
  std::lock_guard<std::mutex> lock(mutex_);
  if (draining_ || stopping_) return absl::UnavailableError("server is draining; retry on another replica");
  if (static_cast<int>(queue_.size()) >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrCat("queue full: ", queue_.size(), " requests waiting (max_queue ", options_.max_queue, ")"));
  }
  MF_ASSIGN_OR_RETURN(Plan plan, planner_->Choose(plan_request, Load()));
  active->handle = std::make_shared<RequestHandle>();
  active->handle->plan_ = std::move(plan);
  active->request = std::move(request);
  active->callbacks = std::move(callbacks);
  active->order = next_order_++;
  std::shared_ptr<RequestHandle> handle = active->handle;
  // Highest priority first, then earliest deadline, then arrival.
  auto before = [](const Active& a, const Active& b) {
    if (a.request.priority != b.request.priority) return a.request.priority > b.request.priority;
    const absl::Time da = a.request.deadline.value_or(absl::InfiniteFuture());
    const absl::Time db = b.request.deadline.value_or(absl::InfiniteFuture());
    if (da != db) return da < db;
    return a.order < b.order;
  };
  auto position = std::upper_bound(queue_.begin(), queue_.end(), active,
                                   [&](const auto& a, const auto& b) { return before(*a, *b); });
  queue_.insert(position, std::move(active));
  changed_.notify_all();
  return handle;
}

void Scheduler::StopAdmitting() {
  std::lock_guard<std::mutex> lock(mutex_);
  draining_ = true;
}

void Scheduler::Drain(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  draining_ = true;
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return queue_.empty() && running_count_ == 0; };
  // The drain timeout is bounded (--drain_timeout, at most an hour), so it fits std::chrono.
  if (!changed_.wait_for(lock, absl::ToChronoNanoseconds(timeout), idle)) {
    for (auto& queued : queue_) queued->handle->Cancel();
    cancel_running_ = true;
    changed_.wait(lock, idle);
  }
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return SchedulerStats{.running = running_count_,
                        .queued = static_cast<int>(queue_.size()),
                        .kv_blocks_used = engine_->kv_pool().used_blocks(),
                        .kv_blocks_total = engine_->kv_pool().num_blocks(),
                        .steps = steps_,
                        .next_completion = absl::Seconds(service_seconds_ / std::max(1, running_count_))};
}

void Scheduler::Finish(std::unique_ptr<Active> active, absl::Status status) {
  const absl::Time now = Now();
  SchedulerResult& result = active->result;
  result.status = std::move(status);
  result.plan = active->handle->plan();
  result.timings.queue = (active->admitted == absl::Time() ? now : active->admitted) - active->arrival;
  result.timings.time_to_first_token =
      active->first_token == absl::Time() ? absl::ZeroDuration() : active->first_token - active->arrival;
  result.timings.decode = active->first_token == absl::Time() ? absl::ZeroDuration() : now - active->first_token;
  result.timings.total = now - active->arrival;
  result.timings.predicted_total = result.plan.predicted_total();
  if (result.status.ok() && !active->scoring()) {
    // The plan assumed max_new_tokens; compare with the work really done.
    const Plan& plan = result.plan;
    const int planned_steps = std::max(0, active->request.max_new_tokens - 1);
    const int done_steps = std::max(0, static_cast<int>(result.tokens.size()) - 1);
    const absl::Duration decode_done =
        planned_steps == 0 ? absl::ZeroDuration() : plan.predicted_decode * done_steps / planned_steps;
    planner_->correction().Observe((plan.predicted_queue + plan.predicted_prefill + decode_done) / plan.request_scale,
                                   result.timings.total);
    // Service time of a whole request, for the queue-wait estimate of newcomers.
    std::lock_guard<std::mutex> lock(mutex_);
    service_seconds_ = 0.8 * service_seconds_ + 0.2 * absl::ToDoubleSeconds(now - active->admitted);
  }
  active->sequence.reset();  // returns the KV blocks before anyone hears about it
  // The client may send its next request as soon as it hears: the planner
  // must not count this one as running any more (entries being finished
  // were moved out of running_ already).
  PublishRunningRows();
  if (active->callbacks.on_done) active->callbacks.on_done(result);
}

// Emits the tokens sampled since the last call and the text that can no
// longer change: everything but a possible stop-sequence prefix or an
// unfinished UTF-8 character at the end (all of it when `final`).
void Scheduler::EmitText(Active& active, bool final) {
  const SchedulerResult& result = active.result;
  size_t stable = result.text.size();
  if (!final) {
    stable -= active.stops->PendingSuffix(result.text);
    if (absl::EndsWith(absl::string_view(result.text).substr(0, stable), kReplacementCharacter)) {
      stable -= kReplacementCharacter.size();
    }
  }
  stable = std::max(stable, active.text_emitted);
  const std::vector<int32_t> tokens(result.tokens.begin() + active.tokens_emitted, result.tokens.end());
  const std::string delta = result.text.substr(active.text_emitted, stable - active.text_emitted);
  active.tokens_emitted = result.tokens.size();
  active.text_emitted = stable;
  if (active.callbacks.on_tokens && (!tokens.empty() || !delta.empty())) active.callbacks.on_tokens(tokens, delta);
}

// Handles the sampled token of a generating sequence; returns true when it finished.
bool Scheduler::Accept(Active& active, absl::Span<const float> logits) {
  SchedulerResult& result = active.result;
  const int32_t token = active.sampler->Sample(logits);
  if (active.first_token == absl::Time()) active.first_token = Now();
  if (engine_->IsEndOfSequence(token)) {
    result.finish_reason = FinishReason::kEndOfSequence;
    return true;
  }
  result.tokens.push_back(token);
  absl::StatusOr<std::string> text = engine_->tokenizer().Decode(result.tokens);
  // Ids past the tokenizer's pieces (a padded vocabulary) have no text.
  if (text.ok()) result.text = *std::move(text);
  if (const size_t stop = active.stops->Find(result.text); stop != std::string::npos) {
    result.text.resize(stop);
    result.finish_reason = FinishReason::kStop;
    return true;
  }
  if (static_cast<int>(result.tokens.size()) >= active.request.max_new_tokens) {
    result.finish_reason = FinishReason::kLength;
    return true;
  }
  EmitText(active, /*final=*/false);
  active.next_token = token;
  return false;
}

void Scheduler::Admit() {
  std::vector<std::unique_ptr<Active>> rejected;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    while (!queue_.empty() && running_count_ < options_.max_batch_sequences) {
      Active& next = *queue_.front();
      if (next.handle->cancelled()) {
        rejected.push_back(std::move(queue_.front()));
        queue_.pop_front();
        continue;
      }
      auto sequence = engine_->NewSequence(next.spec());
      const int64_t length = static_cast<int64_t>(next.request.prompt.size() + next.request.continuation.size()) +
                             (next.scoring() ? 0 : next.request.max_new_tokens);
      // Reserve the whole sequence now, so a running request never stalls on KV.
      if (!sequence->kv.Reserve(length).ok()) {
        if (running_count_ > 0) break;  // wait for blocks to come back
        rejected.push_back(std::move(queue_.front()));
        queue_.pop_front();
        continue;
      }
      std::unique_ptr<Active> active = std::move(queue_.front());
      queue_.pop_front();
      active->sequence = std::move(sequence);
      active->admitted = Now();
      active->feed = active->request.prompt;
      active->feed.insert(active->feed.end(), active->request.continuation.begin(),
                          active->request.continuation.end());
      active->sampler = std::make_unique<Sampler>(active->request.sampling);
      active->stops = std::make_unique<StopMatcher>(active->request.stop_sequences);
      running_rows_.push_back(Describe(*active));
      running_.push_back(std::move(active));
      ++running_count_;
    }
  }
  changed_.notify_all();  // the queue shrank
  for (auto& active : rejected) {
    const bool cancelled = active->handle->cancelled();
    Finish(std::move(active), cancelled ? absl::CancelledError("cancelled while queued")
                                        : absl::ResourceExhaustedError("KV cache cannot hold this request"));
  }
}

bool Scheduler::RunOneStep() {
  Admit();
  // Cancelled or expired sequences stop here, before spending another step on them.
  const absl::Time now = Now();
  for (auto& active : running_) {
    if (active == nullptr) continue;
    const bool expired = active->request.deadline.has_value() && now >= *active->request.deadline;
    if (active->handle->cancelled() || cancel_running_) {
      Finish(std::move(active), absl::CancelledError("cancelled"));
    } else if (expired) {
      Finish(std::move(active), absl::DeadlineExceededError("deadline expired before the request finished"));
    }
  }
  Compact();
  if (running_.empty()) return false;

  std::vector<StepInput> inputs;
  std::vector<Active*> owners;
  std::vector<const SubmodelSpec*> row_specs;
  int64_t step_tokens = 0;
  // Decode rows first, most urgent first (earliest deadline per remaining
  // step); a row joins only if the step, with it, still fits the time per
  // step that every urgent row already in it can afford. A row left out
  // waits one step; after kMaxSkippedSteps in a row it joins regardless.
  std::vector<Active*> decoding;
  std::vector<DecodeCandidate> candidates;
  for (auto& active : running_) {
    if (active->fed < active->feed.size()) continue;
    decoding.push_back(active.get());
    candidates.push_back({TimePerRemainingStep(*active, now), &active->spec(), active->skipped_steps});
  }
  const DecodeStep composed = ComposeDecodeStep(candidates, planner_->latency(), engine_->config(),
                                                planner_->correction().factors().conservative());
  for (Active* active : decoding) ++active->skipped_steps;
  for (size_t index : composed.rows) {
    Active* active = decoding[index];
    active->skipped_steps = 0;
    inputs.push_back({active->sequence.get(), absl::MakeConstSpan(&active->next_token, 1)});
    owners.push_back(active);
    row_specs.push_back(&active->spec());
    ++step_tokens;
  }
  const absl::Duration step_allowance = composed.allowance;
  for (auto& active : running_) {
    if (active->fed >= active->feed.size() || step_tokens >= options_.max_step_tokens) continue;
    int64_t chunk = std::min<int64_t>({static_cast<int64_t>(active->feed.size() - active->fed),
                                       options_.prefill_chunk, options_.max_step_tokens - step_tokens});
    chunk = FitChunk(chunk, active->spec(), row_specs, step_allowance);
    inputs.push_back({active->sequence.get(), absl::MakeConstSpan(active->feed).subspan(active->fed, chunk),
                      /*all_logits=*/active->scoring()});
    owners.push_back(active.get());
    row_specs.insert(row_specs.end(), chunk, &active->spec());
    step_tokens += chunk;
  }

  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::vector<float>> logits = engine_->Step(inputs);
  const absl::Duration elapsed = absl::FromChrono(std::chrono::steady_clock::now() - start);
  if (!logits.ok()) {
    for (auto& active : running_) Finish(std::move(active), logits.status());
    Compact();
    return true;
  }
  planner_->latency().Observe(row_specs, engine_->config(), elapsed);
  if (step_observer_) step_observer_(static_cast<int>(step_tokens), elapsed);

  const int64_t vocab = engine_->config().vocab_size;
  const float* row = logits->data();
  for (size_t i = 0; i < inputs.size(); ++i) {
    Active& active = *owners[i];
    const int64_t count = static_cast<int64_t>(inputs[i].tokens.size());
    const bool decoding = active.fed >= active.feed.size();
    if (active.scoring()) {
      // Row t predicts feed[fed + t + 1]; keep those that predict continuation tokens.
      const size_t first_scored = active.request.prompt.size();
      for (int64_t t = 0; t < count; ++t) {
        const size_t target = active.fed + t + 1;
        if (target >= first_scored && target < active.feed.size()) {
          active.result.continuation_logprobs.push_back(
              LogProbability(absl::MakeConstSpan(row + t * vocab, vocab), active.feed[target]));
        }
      }
      row += count * vocab;
      active.fed += count;
      if (active.fed == active.feed.size()) active.done = true;
      continue;
    }
    if (!decoding) active.fed += count;
    const absl::Span<const float> last = absl::MakeConstSpan(row, vocab);
    row += vocab;
    if (active.fed < active.feed.size()) continue;  // more prompt to prefill
    active.done = Accept(active, last);
  }
  for (auto& active : running_) {
    if (active->done) {
      if (!active->scoring()) EmitText(*active, /*final=*/true);
      Finish(std::move(active), absl::OkStatus());
    }
  }
  Compact();
  std::lock_guard<std::mutex> lock(mutex_);
  ++steps_;
  return true;
}

// Drops finished entries from the running set and republishes its specs.
// The running count drops here, after the finished requests' callbacks ran:
// a drain waits for it, and then the server shuts down.
void Scheduler::Compact() {
  std::erase(running_, nullptr);
  PublishRunningRows();
  std::lock_guard<std::mutex> lock(mutex_);
  running_count_ = static_cast<int>(running_.size());
  changed_.notify_all();
}

// What the planner sees of the running set (finished entries are null).
void Scheduler::PublishRunningRows() {
  std::lock_guard<std::mutex> lock(mutex_);
  running_rows_.clear();
  for (const auto& active : running_) {
    if (active != nullptr) running_rows_.push_back(Describe(*active));
  }
}

void Scheduler::Loop() {
  SetEngineThreads(options_.engine_threads);
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stopping_ || !queue_.empty() || running_count_ > 0;
      };
      changed_.wait(lock, has_work);
      if (stopping_) break;
    }
    RunOneStep();
  }
  // Shutting down: everyone still here hears so.
  std::vector<std::unique_ptr<Active>> left;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& queued : queue_) left.push_back(std::move(queued));
    queue_.clear();
  }
  for (auto& active : running_) left.push_back(std::move(active));
  running_.clear();
  Compact();
  for (auto& active : left) Finish(std::move(active), absl::UnavailableError("server shutting down"));
}

}  // namespace matformer
