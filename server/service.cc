#include "server/service.h"

#include <chrono>
#include <deque>
#include <random>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "server/log.h"
#include "server/status_mapping.h"

namespace matformer::server {
namespace {

std::optional<absl::Time> CallDeadline(const grpc::CallbackServerContext& context) {
  const std::chrono::system_clock::time_point deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return std::nullopt;
  return absl::FromChrono(deadline);
}

// The tier as the client sent it, escaped and cut at 64 bytes: a rejected
// request's tier is arbitrary bytes, up to --max_message_bytes of them.
std::string TierField(const std::string& tier) {
  constexpr size_t kMaxShown = 64;
  if (tier.empty()) return "-";
  return tier.size() > kMaxShown ? absl::StrCat(absl::CEscape(tier.substr(0, kMaxShown)), "...") : absl::CEscape(tier);
}

// " client=<name>" when the call was authenticated, else nothing.
std::string ClientField(const std::string& client) { return client.empty() ? "" : absl::StrCat(" client=", client); }

std::string Millis(absl::Duration duration) { return absl::StrFormat("%.1f", absl::ToDoubleMilliseconds(duration)); }

}  // namespace

// What the server remembers about one Generate / Score call for its metrics
// and log line. Written by the handler before Submit, then read (and
// last_delivery written) on the scheduler thread only.
struct MatFormerService::CallRecord {
  std::string id;
  std::string method;
  std::string tier;
  std::string client;  // the bearer token's name, when authentication is on
  ResolvedBudget budget;
  size_t prompt_tokens = 0;
  absl::Time last_delivery = absl::InfinitePast();
};

// Links a call to its scheduler request: a client cancellation can arrive
// before Submit has returned the handle, or after.
class MatFormerService::CancelLink {
 public:
  void Attach(std::shared_ptr<RequestHandle> handle) {
    absl::MutexLock lock(&mutex_);
    handle_ = std::move(handle);
    if (cancelled_) handle_->Cancel();
  }
  void Cancel() {
    absl::MutexLock lock(&mutex_);
    cancelled_ = true;
    if (handle_ != nullptr) handle_->Cancel();
  }

 private:
  absl::Mutex mutex_;
  std::shared_ptr<RequestHandle> handle_ ABSL_GUARDED_BY(mutex_);
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
};

// Reactors are reference-counted: gRPC holds one reference until OnDone, the
// scheduler's callbacks another until they are destroyed, so neither side can
// free the reactor while the other is still inside it.
class MatFormerService::UnaryCall : public grpc::ServerUnaryReactor, public CancelLink {
 public:
  static std::shared_ptr<UnaryCall> Create() {
    std::shared_ptr<UnaryCall> call(new UnaryCall());
    call->self_ = call;
    return call;
  }
  void OnCancel() override { Cancel(); }
  void OnDone() override { std::shared_ptr<UnaryCall> last = std::move(self_); }

 private:
  UnaryCall() = default;
  std::shared_ptr<UnaryCall> self_;
};

// A server stream fed from the scheduler thread: messages queue here and are
// written one at a time (gRPC allows one write in flight); the stream
// finishes once the queue has drained after Close.
class MatFormerService::StreamCall : public grpc::ServerWriteReactor<v1::GenerateStreamResponse>, public CancelLink {
 public:
  static std::shared_ptr<StreamCall> Create() {
    std::shared_ptr<StreamCall> call(new StreamCall());
    call->self_ = call;
    return call;
  }

  void Send(v1::GenerateStreamResponse message) {
    {
      absl::MutexLock lock(&mutex_);
      if (broken_) return;
      pending_.push_back(std::move(message));
    }
    Pump();
  }
  // Finishes with `status` after the queued messages are written.
  void Close(grpc::Status status) {
    {
      absl::MutexLock lock(&mutex_);
      final_status_ = std::move(status);
    }
    Pump();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mutex_);
      writing_ = false;
      pending_.pop_front();
      // The client is gone: nothing more can be delivered.
      if (!ok) {
        broken_ = true;
        pending_.clear();
      }
    }
    if (!ok) Cancel();
    Pump();
  }
  void OnCancel() override { Cancel(); }
  void OnDone() override { std::shared_ptr<StreamCall> last = std::move(self_); }

 private:
  StreamCall() = default;

  void Pump() {
    const v1::GenerateStreamResponse* next = nullptr;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mutex_);
      if (writing_ || finished_) return;
      if (!pending_.empty()) {
        writing_ = true;
        next = &pending_.front();  // deque elements stay put while others are appended
      } else if (final_status_.has_value()) {
        finished_ = true;
        finish = final_status_;
      }
    }
    if (next != nullptr) {
      StartWrite(next);
    } else if (finish.has_value()) {
      Finish(*finish);
    }
  }

  absl::Mutex mutex_;
  std::deque<v1::GenerateStreamResponse> pending_ ABSL_GUARDED_BY(mutex_);  // front is being written when writing_
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool broken_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
  std::optional<grpc::Status> final_status_ ABSL_GUARDED_BY(mutex_);
  std::shared_ptr<StreamCall> self_;
};

MatFormerService::MatFormerService(const Dependencies& dependencies)
    : deps_(dependencies),
      builder_(*deps_.engine, *deps_.tiers, deps_.limits),
      // Start time plus random bits: replicas started in the same second
      // still log distinct ids.
      id_prefix_(absl::StrFormat("%x%04x", absl::ToUnixSeconds(absl::Now()), std::random_device()() & 0xffff)) {}

std::shared_ptr<MatFormerService::CallRecord> MatFormerService::NewRecord(grpc::CallbackServerContext* context,
                                                                          absl::string_view method,
                                                                          absl::string_view tier) {
  auto record = std::make_shared<CallRecord>();
  record->id = absl::StrCat(id_prefix_, "-", next_id_.fetch_add(1));
  record->method = std::string(method);
  record->tier = std::string(tier);
  // Also on failures, where there is no response message to carry it.
  context->AddTrailingMetadata("request-id", record->id);
  return record;
}

void MatFormerService::Reject(const CallRecord& record, const absl::Status& status) {
  const grpc::Status grpc_status = ToGrpcStatus(status);
  deps_.metrics->RecordRequest(record.method, record.tier, grpc_status.error_code());
  Log(absl::StrCat("request id=", record.id, " method=", record.method, " tier=", TierField(record.tier),
                   ClientField(record.client), " status=", GrpcCodeName(grpc_status.error_code()), " error=\"",
                   absl::CEscape(status.message()), "\""));
}

void MatFormerService::Complete(const CallRecord& record, const SchedulerResult& result) {
  const grpc::Status grpc_status = ToGrpcStatus(result.status);
  deps_.metrics->RecordCompletion(record.tier, result, record.budget);
  deps_.metrics->RecordRequest(record.method, record.tier, grpc_status.error_code());
  const Timings& t = result.timings;
  std::string line =
      absl::StrCat("request id=", record.id, " method=", record.method, " tier=", TierField(record.tier),
                   ClientField(record.client), " spec=", result.plan.choice.spec.name(),
                   " active_params=", result.plan.choice.spec.active_params(),
                   " budget_ms=", record.budget.budget.has_value() ? Millis(*record.budget.budget) : "-",
                   " budget_from=", BudgetSourceName(record.budget.source), " prompt_tokens=", record.prompt_tokens,
                   " new_tokens=", result.tokens.size(), " queue_ms=", Millis(t.queue),
                   " ttft_ms=", Millis(t.time_to_first_token), " total_ms=", Millis(t.total),
                   " predicted_ms=", Millis(t.predicted_total), " status=", GrpcCodeName(grpc_status.error_code()));
  if (!result.status.ok()) absl::StrAppend(&line, " error=\"", absl::CEscape(result.status.message()), "\"");
  Log(line);
}

void MatFormerService::ObserveTokens(CallRecord& record, size_t tokens) {
  const absl::Time now = absl::Now();
  if (record.last_delivery != absl::InfinitePast()) {
    deps_.metrics->RecordInterToken(record.tier, now - record.last_delivery, static_cast<int>(tokens));
  }
  if (tokens > 0) record.last_delivery = now;
}

absl::Status MatFormerService::CheckAccess(const grpc::CallbackServerContext& context,
                                          std::optional<absl::string_view> tier, CallRecord* record) const {
  if (deps_.authenticator == nullptr) return absl::OkStatus();
  std::vector<absl::string_view> authorization;
  const auto range = context.client_metadata().equal_range("authorization");
  for (auto it = range.first; it != range.second; ++it) {
    authorization.emplace_back(it->second.data(), it->second.size());
  }
  absl::StatusOr<const Principal*> principal = deps_.authenticator->Authenticate(authorization);
  if (!principal.ok()) return principal.status();
  if (record != nullptr) record->client = (*principal)->name;
  if (tier.has_value()) return TokenAuthenticator::Authorize(**principal, *tier);
  return absl::OkStatus();
}

absl::Status MatFormerService::Start(grpc::CallbackServerContext* context, const std::shared_ptr<CallRecord>& record,
                                     const std::shared_ptr<CancelLink>& link,
                                     absl::FunctionRef<absl::StatusOr<PreparedRequest>()> prepare,
                                     absl::FunctionRef<RequestCallbacks(const PreparedRequest&)> make_callbacks) {
  const absl::Status access = CheckAccess(*context, record->tier, record.get());
  absl::StatusOr<PreparedRequest> prepared = access.ok() ? prepare() : access;
  if (!prepared.ok()) {
    Reject(*record, prepared.status());
    return prepared.status();
  }
  record->budget = prepared->budget;
  record->prompt_tokens = prepared->request.prompt.size();
  RequestCallbacks callbacks = make_callbacks(*prepared);
  absl::StatusOr<std::shared_ptr<RequestHandle>> handle =
      deps_.scheduler->Submit(std::move(prepared->request), std::move(callbacks));
  if (!handle.ok()) {
    if (absl::IsResourceExhausted(handle.status())) {
      // Shed at once with a hint of when capacity frees up; gRPC clients with
      // a retry policy honour this trailer.
      const int64_t retry_ms =
          std::max<int64_t>(10, absl::ToInt64Milliseconds(deps_.scheduler->stats().next_completion));
      context->AddTrailingMetadata("grpc-retry-pushback-ms", absl::StrCat(retry_ms));
    }
    Reject(*record, handle.status());
    return handle.status();
  }
  link->Attach(*std::move(handle));
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* MatFormerService::Generate(grpc::CallbackServerContext* context,
                                                     const v1::GenerateRequest* request,
                                                     v1::GenerateResponse* response) {
  std::shared_ptr<UnaryCall> call = UnaryCall::Create();
  std::shared_ptr<CallRecord> record = NewRecord(context, "Generate", request->tier());
  const absl::Status started = Start(
      context, record, call, [&] { return builder_.Generate(*request, CallDeadline(*context), absl::Now()); },
      [&](const PreparedRequest&) {
        RequestCallbacks callbacks;
        callbacks.on_tokens = [this, record](const std::vector<int32_t>& tokens, const std::string&) {
          ObserveTokens(*record, tokens.size());
        };
        callbacks.on_done = [this, record, call, response](const SchedulerResult& result) {
          if (result.status.ok()) FillGenerateResponse(result, record->id, record->budget, response);
          Complete(*record, result);
          call->Finish(ToGrpcStatus(result.status));
        };
        return callbacks;
      });
  if (!started.ok()) call->Finish(ToGrpcStatus(started));
  return call.get();
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* MatFormerService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  std::shared_ptr<StreamCall> call = StreamCall::Create();
  std::shared_ptr<CallRecord> record = NewRecord(context, "GenerateStream", request->tier());
  const absl::Status started = Start(
      context, record, call, [&] { return builder_.Generate(*request, CallDeadline(*context), absl::Now()); },
      [&](const PreparedRequest&) {
        RequestCallbacks callbacks;
        callbacks.on_tokens = [this, record, call](const std::vector<int32_t>& tokens,
                                                   const std::string& text_delta) {
          ObserveTokens(*record, tokens.size());
          v1::GenerateStreamResponse chunk;
          chunk.set_text(text_delta);
          chunk.mutable_token_ids()->Add(tokens.begin(), tokens.end());
          call->Send(std::move(chunk));
        };
        callbacks.on_done = [this, record, call](const SchedulerResult& result) {
          if (result.status.ok()) {
            v1::GenerateStreamResponse last;
            FillGenerateResponse(result, record->id, record->budget, last.mutable_summary());
            call->Send(std::move(last));
          }
          Complete(*record, result);
          call->Close(ToGrpcStatus(result.status));
        };
        return callbacks;
      });
  if (!started.ok()) call->Close(ToGrpcStatus(started));
  return call.get();
}

grpc::ServerUnaryReactor* MatFormerService::Score(grpc::CallbackServerContext* context, const v1::ScoreRequest* request,
                                                  v1::ScoreResponse* response) {
  std::shared_ptr<UnaryCall> call = UnaryCall::Create();
  std::shared_ptr<CallRecord> record = NewRecord(context, "Score", request->tier());
  const absl::Status started = Start(
      context, record, call, [&] { return builder_.Score(*request, CallDeadline(*context), absl::Now()); },
      [&](const PreparedRequest& prepared) {
        RequestCallbacks callbacks;
        callbacks.on_done = [this, record, call, response,
                             continuation = prepared.request.continuation](const SchedulerResult& result) {
          if (result.status.ok()) FillScoreResponse(result, continuation, record->id, record->budget, response);
          Complete(*record, result);
          call->Finish(ToGrpcStatus(result.status));
        };
        return callbacks;
      });
  if (!started.ok()) call->Finish(ToGrpcStatus(started));
  return call.get();
}

grpc::ServerUnaryReactor* MatFormerService::GetModelInfo(grpc::CallbackServerContext* context,
                                                         const v1::GetModelInfoRequest* /*request*/,
                                                         v1::ModelInfo* response) {
  const grpc::Status status = ToGrpcStatus(CheckAccess(*context, std::nullopt, nullptr));
  if (status.ok()) *response = BuildModelInfo(*deps_.engine, *deps_.planner, *deps_.tiers, deps_.serving);
  deps_.metrics->RecordRequest("GetModelInfo", "", status.error_code());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

grpc::ServerUnaryReactor* MatFormerService::Tokenize(grpc::CallbackServerContext* context,
                                                     const v1::TokenizeRequest* request,
                                                     v1::TokenizeResponse* response) {
  const absl::Status access = CheckAccess(*context, std::nullopt, nullptr);
  absl::StatusOr<v1::TokenizeResponse> tokenized = access.ok() ? builder_.Tokenize(*request) : access;
  if (tokenized.ok()) *response = *std::move(tokenized);
  const grpc::Status status = ToGrpcStatus(tokenized.status());
  deps_.metrics->RecordRequest("Tokenize", "", status.error_code());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace matformer::server
