#ifndef MATFORMER_SERVER_REQUESTS_H_
#define MATFORMER_SERVER_REQUESTS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/serving_engine.h"
#include "core/sched/scheduler.h"
#include "matformer/v1/matformer.pb.h"
#include "server/budget.h"
#include "server/tiers.h"

namespace matformer::server {

// Per-request limits of the API (server flags of the same names).
struct RequestLimits {
  int max_prompt_tokens = 768;
  int max_new_tokens_limit = 256;
  int max_stop_sequences = 8;
  int max_stop_bytes = 64;
};

// Messages of one chat prompt (each also counts against --max_prompt_tokens).
inline constexpr int kMaxChatMessages = 256;

// max_new_tokens when a request leaves it unset (capped at the limit).
inline constexpr int kDefaultMaxNewTokens = 32;

// A validated request, ready for Scheduler::Submit.
struct PreparedRequest {
  SchedulerRequest request;
  ResolvedBudget budget;
};

// Turns API requests into scheduler requests. Every check a client can fail
// lives here and answers InvalidArgument with the field and the limit (the
// scheduler re-checks what the engine needs, e.g. the model's context length).
class RequestBuilder {
 public:
  RequestBuilder(const ServingEngine& engine, const std::vector<Tier>& tiers, const RequestLimits& limits);

  // `deadline`: the call's deadline, if it has one.
  absl::StatusOr<PreparedRequest> Generate(const v1::GenerateRequest& proto, std::optional<absl::Time> deadline,
                                           absl::Time now) const;
  absl::StatusOr<PreparedRequest> Score(const v1::ScoreRequest& proto, std::optional<absl::Time> deadline,
                                        absl::Time now) const;
  absl::StatusOr<v1::TokenizeResponse> Tokenize(const v1::TokenizeRequest& proto) const;

 private:
  // The ids a text prompt becomes: BOS, then the text's pieces.
  absl::StatusOr<std::vector<int32_t>> PromptFromText(absl::string_view field, absl::string_view text) const;
  // Chat messages through the model's chat template, then as text.
  absl::StatusOr<std::vector<int32_t>> PromptFromChat(const v1::Chat& chat) const;
  absl::StatusOr<std::vector<int32_t>> CheckedIds(absl::string_view field,
                                                  const google::protobuf::RepeatedField<int32_t>& ids) const;
  // The prompt of a Generate or Score request, within the length limit.
  template <typename Proto>
  absl::StatusOr<std::vector<int32_t>> Prompt(const Proto& proto) const;
  // The fields that choose the submodel, common to Generate and Score.
  template <typename Proto>
  absl::Status ApplyRouting(const Proto& proto, std::optional<absl::Time> deadline, absl::Time now,
                            PreparedRequest& prepared) const;

  const ServingEngine& engine_;
  const std::vector<Tier>& tiers_;
  RequestLimits limits_;
};

// True when `text` is well-formed UTF-8 (no overlong forms, surrogates or
// code points past U+10FFFF).
bool IsValidUtf8(absl::string_view text);

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_REQUESTS_H_
