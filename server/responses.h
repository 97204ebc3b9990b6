#ifndef MATFORMER_SERVER_RESPONSES_H_
#define MATFORMER_SERVER_RESPONSES_H_

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "core/engine.h"
#include "core/plan/planner.h"
#include "core/sched/scheduler.h"
#include "google/protobuf/duration.pb.h"
#include "matformer/v1/matformer.pb.h"
#include "server/budget.h"
#include "server/tiers.h"

namespace matformer::server {

// Engine and scheduler results as API messages.

void ToProto(absl::Duration duration, google::protobuf::Duration* out);
void ToProto(const Candidate& candidate, v1::Submodel* out);
v1::FinishReason ToProto(FinishReason reason);

void FillGenerateResponse(const SchedulerResult& result, const std::string& request_id, const ResolvedBudget& budget,
                          v1::GenerateResponse* out);
// `continuation`: the scored tokens (the scheduler reports only their logprobs).
void FillScoreResponse(const SchedulerResult& result, const std::vector<int32_t>& continuation,
                       const std::string& request_id, const ResolvedBudget& budget, v1::ScoreResponse* out);

// What GetModelInfo reports besides the engine's own state.
struct ServingDescription {
  std::string model_dir;
  std::string policy;       // "elastic" or "fixed:<spec>"
  std::string over_budget;  // "reject" or "serve_smallest"
};
v1::ModelInfo BuildModelInfo(ServingEngine& engine, const Planner& planner, const std::vector<Tier>& tiers,
                             const ServingDescription& serving);

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_RESPONSES_H_
