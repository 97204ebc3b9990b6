#ifndef MATFORMER_SERVER_SERVICE_H_
#define MATFORMER_SERVER_SERVICE_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "core/engine.h"
#include "core/plan/planner.h"
#include "core/sched/scheduler.h"
#include "grpcpp/grpcpp.h"
#include "matformer/v1/matformer.grpc.pb.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/requests.h"
#include "server/responses.h"
#include "server/tiers.h"

namespace matformer::server {

// The MatFormer gRPC service on the callback API. Handlers validate and
// submit to the scheduler, whose thread later delivers tokens and the result
// to the call's reactor; no gRPC thread ever waits on the engine.
class MatFormerService final : public v1::MatFormer::CallbackService {
 public:
  struct Dependencies {
    ServingEngine* engine;
    Planner* planner;
    Scheduler* scheduler;
    ServerMetrics* metrics;
    const std::vector<Tier>* tiers;
    RequestLimits limits;
    // Bearer-token authentication (--auth_tokens); nullptr: every caller is let in.
    const TokenAuthenticator* authenticator = nullptr;
    ServingDescription serving;
  };
  explicit MatFormerService(const Dependencies& dependencies);

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerateStream(grpc::CallbackServerContext* context,
                                                                       const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context, const v1::ScoreRequest* request,
                                  v1::ScoreResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context, const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context, const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;

 private:
  struct CallRecord;
  class CancelLink;
  class UnaryCall;
  class StreamCall;

  std::shared_ptr<CallRecord> NewRecord(grpc::CallbackServerContext* context, absl::string_view method,
                                        absl::string_view tier);
  // Bookkeeping for a request that ended before reaching the scheduler.
  void Reject(const CallRecord& record, const absl::Status& status);
  // Bookkeeping for a request the scheduler finished: metrics and the log line.
  void Complete(const CallRecord& record, const SchedulerResult& result);
  void ObserveTokens(CallRecord& record, size_t tokens);
  // With an authenticator: UNAUTHENTICATED unless the call carries a known
  // bearer token, PERMISSION_DENIED unless that token may use `tier` (when
  // given; empty = no tier). Names the caller in `record` (if any).
  absl::Status CheckAccess(const grpc::CallbackServerContext& context, std::optional<absl::string_view> tier,
                           CallRecord* record) const;
  // The path of every model call to the scheduler: checks access, builds the
  // request (`prepare`), submits it with the callbacks `make_callbacks` gives
  // for it and links cancellation. OK means the scheduler owns the call and
  // its callbacks end it; otherwise the call was rejected (with a retry hint
  // in the trailers when shed) and the caller ends it with the status.
  absl::Status Start(grpc::CallbackServerContext* context, const std::shared_ptr<CallRecord>& record,
                     const std::shared_ptr<CancelLink>& link,
                     absl::FunctionRef<absl::StatusOr<PreparedRequest>()> prepare,
                     absl::FunctionRef<RequestCallbacks(const PreparedRequest&)> make_callbacks);

  Dependencies deps_;
  RequestBuilder builder_;
  const std::string id_prefix_;
  std::atomic<uint64_t> next_id_{1};
};

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_SERVICE_H_
