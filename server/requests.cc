#include "server/requests.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "core/model/submodel.h"
#include "core/sampler.h"
#include "core/util/status_macros.h"

namespace matformer::server {
namespace {

// google.protobuf.Duration's documented range.
constexpr int64_t kMaxDurationSeconds = 315576000000;
constexpr int32_t kMaxDurationNanos = 999999999;

// Client text quoted in an error message (and so in the log line): at most
// 64 bytes, escaped, so a huge field cannot make a huge message.
std::string Quoted(absl::string_view text) {
  constexpr size_t kMaxShown = 64;
  return absl::StrCat("\"", absl::CEscape(text.substr(0, kMaxShown)), text.size() > kMaxShown ? "...\"" : "\"");
}

absl::Status CheckUtf8(absl::string_view field, absl::string_view text) {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError(absl::StrCat(field, ": not valid UTF-8"));
  return absl::OkStatus();
}

absl::StatusOr<absl::Duration> NonNegativeDuration(absl::string_view field, const google::protobuf::Duration& d) {
  const bool in_range = d.seconds() >= -kMaxDurationSeconds && d.seconds() <= kMaxDurationSeconds &&
                        d.nanos() >= -kMaxDurationNanos && d.nanos() <= kMaxDurationNanos &&
                        !(d.seconds() > 0 && d.nanos() < 0) && !(d.seconds() < 0 && d.nanos() > 0);
  if (!in_range) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": not a valid google.protobuf.Duration (seconds ",
                                                   d.seconds(), ", nanos ", d.nanos(), ")"));
  }
  const absl::Duration duration = absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
  if (duration < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " = ", absl::FormatDuration(duration), " is negative"));
  }
  return duration;
}

// Score requests have no chat prompt.
const v1::Chat* ChatOf(const v1::GenerateRequest& proto) { return proto.has_chat() ? &proto.chat() : nullptr; }
const v1::Chat* ChatOf(const v1::ScoreRequest&) { return nullptr; }

}  // namespace

bool IsValidUtf8(absl::string_view text) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const size_t size = text.size();
  size_t i = 0;
  while (i < size) {
    const unsigned char lead = bytes[i];
    if (lead < 0x80) {
      ++i;
      continue;
    }
    int length = 0;
    uint32_t code_point = 0;
    uint32_t min_code_point = 0;
    if ((lead & 0xE0) == 0xC0) {
      length = 2, code_point = lead & 0x1F, min_code_point = 0x80;
    } else if ((lead & 0xF0) == 0xE0) {
      length = 3, code_point = lead & 0x0F, min_code_point = 0x800;
    } else if ((lead & 0xF8) == 0xF0) {
      length = 4, code_point = lead & 0x07, min_code_point = 0x10000;
    } else {
      return false;  // a continuation byte or 0xF8..0xFF in lead position
    }
    if (size - i < static_cast<size_t>(length)) return false;
    for (int k = 1; k < length; ++k) {
      if ((bytes[i + k] & 0xC0) != 0x80) return false;
      code_point = (code_point << 6) | (bytes[i + k] & 0x3F);
    }
    if (code_point < min_code_point || code_point > 0x10FFFF || (code_point >= 0xD800 && code_point <= 0xDFFF)) {
      return false;
    }
    i += length;
  }
  return true;
}

RequestBuilder::RequestBuilder(const ServingEngine& engine, const std::vector<Tier>& tiers, const RequestLimits& limits)
    : engine_(engine), tiers_(tiers), limits_(limits) {}

absl::StatusOr<std::vector<int32_t>> RequestBuilder::PromptFromText(absl::string_view field,
                                                                    absl::string_view text) const {
  MF_RETURN_IF_ERROR(CheckUtf8(field, text));
  if (text.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty"));
  absl::StatusOr<std::vector<int>> pieces = engine_.tokenizer().Encode(text);
  if (!pieces.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ": ", pieces.status().message()));
  std::vector<int32_t> ids;
  ids.reserve(pieces->size() + 1);
  ids.push_back(engine_.config().bos_token_id);
  ids.insert(ids.end(), pieces->begin(), pieces->end());
  return ids;
}

absl::StatusOr<std::vector<int32_t>> RequestBuilder::PromptFromChat(const v1::Chat& chat) const {
  if (chat.messages().empty()) return absl::InvalidArgumentError("chat.messages: empty");
  if (chat.messages_size() > kMaxChatMessages) {
    return absl::InvalidArgumentError(
        absl::StrCat("chat.messages: ", chat.messages_size(), " messages, more than the limit of ", kMaxChatMessages));
  }
  std::vector<std::pair<std::string, std::string>> messages;
  for (int i = 0; i < chat.messages_size(); ++i) {
    const v1::ChatMessage& message = chat.messages(i);
    const std::string field = absl::StrCat("chat.messages[", i, "]");
    MF_RETURN_IF_ERROR(CheckUtf8(field + ".role", message.role()));
    MF_RETURN_IF_ERROR(CheckUtf8(field + ".content", message.content()));
    messages.emplace_back(message.role(), message.content());
  }
  MF_ASSIGN_OR_RETURN(std::string text, engine_.FormatChat(messages));
  return PromptFromText("chat", text);
}

absl::StatusOr<std::vector<int32_t>> RequestBuilder::CheckedIds(
    absl::string_view field, const google::protobuf::RepeatedField<int32_t>& ids) const {
  const int64_t vocab = engine_.config().vocab_size;
  if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty"));
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, "[", i, "] = ", ids[i], " outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return std::vector<int32_t>(ids.begin(), ids.end());
}

template <typename Proto>
absl::StatusOr<std::vector<int32_t>> RequestBuilder::Prompt(const Proto& proto) const {
  std::vector<int32_t> prompt;
  if (proto.has_text()) {
    MF_ASSIGN_OR_RETURN(prompt, PromptFromText("text", proto.text()));
  } else if (proto.has_token_ids()) {
    MF_ASSIGN_OR_RETURN(prompt, CheckedIds("token_ids", proto.token_ids().ids()));
  } else if (const v1::Chat* chat = ChatOf(proto); chat != nullptr) {
    MF_ASSIGN_OR_RETURN(prompt, PromptFromChat(*chat));
  } else {
    return absl::InvalidArgumentError("prompt: missing (set text, token_ids or chat)");
  }
  if (static_cast<int64_t>(prompt.size()) > limits_.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", prompt.size(), " tokens, more than the limit of ",
                                                   limits_.max_prompt_tokens, " (--max_prompt_tokens)"));
  }
  return prompt;
}

template <typename Proto>
absl::Status RequestBuilder::ApplyRouting(const Proto& proto, std::optional<absl::Time> deadline, absl::Time now,
                                          PreparedRequest& prepared) const {
  SchedulerRequest& request = prepared.request;
  MF_RETURN_IF_ERROR(CheckUtf8("tier", proto.tier()));
  const Tier* tier = nullptr;
  if (!proto.tier().empty()) {
    tier = FindTier(tiers_, proto.tier());
    if (tier == nullptr) {
      std::string known;
      for (const Tier& t : tiers_) absl::StrAppend(&known, known.empty() ? "" : ", ", t.name);
      return absl::InvalidArgumentError(absl::StrCat("tier: unknown tier ", Quoted(proto.tier()), " (known: ",
                                                     known.empty() ? "no tiers configured" : known, ")"));
    }
    request.tier = tier->name;
    request.priority = tier->priority;
  }

  std::optional<absl::Duration> explicit_budget;
  if (proto.has_latency_budget()) {
    MF_ASSIGN_OR_RETURN(explicit_budget, NonNegativeDuration("latency_budget", proto.latency_budget()));
  }
  if (deadline.has_value()) {
    if (*deadline <= now) return absl::DeadlineExceededError("the call's deadline passed before it was scheduled");
    request.deadline = deadline;
  }
  prepared.budget = ResolveBudget(explicit_budget, tier, deadline, now);
  request.budget = prepared.budget.budget;

  const ModelConfig& config = engine_.config();
  if (proto.has_spec_name() && proto.layer_widths_size() > 0) {
    return absl::InvalidArgumentError("spec_name and layer_widths: set one of them, not both");
  }
  if (proto.layer_widths_size() == 0 && proto.skipped_layers_size() > 0) {
    return absl::InvalidArgumentError("skipped_layers: needs layer_widths (one width per layer)");
  }
  if (proto.has_spec_name()) {
    MF_RETURN_IF_ERROR(CheckUtf8("spec_name", proto.spec_name()));
    absl::StatusOr<SubmodelSpec> spec = SubmodelSpec::Parse(config, proto.spec_name());
    if (!spec.ok()) return absl::InvalidArgumentError(absl::StrCat("spec_name: ", spec.status().message()));
    request.pinned_spec = *std::move(spec);
  } else if (proto.layer_widths_size() > 0) {
    absl::StatusOr<SubmodelSpec> spec =
        SubmodelSpec::Create(config, std::vector<int64_t>(proto.layer_widths().begin(), proto.layer_widths().end()),
                             std::vector<int>(proto.skipped_layers().begin(), proto.skipped_layers().end()));
    if (!spec.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("layer_widths/skipped_layers: ", spec.status().message()));
    }
    request.pinned_spec = *std::move(spec);
  }

  if (proto.has_max_expected_loss()) {
    if (!std::isfinite(proto.max_expected_loss())) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_expected_loss = ", proto.max_expected_loss(), " is not finite"));
    }
    request.max_expected_loss = proto.max_expected_loss();
  }
  return absl::OkStatus();
}

absl::StatusOr<PreparedRequest> RequestBuilder::Generate(const v1::GenerateRequest& proto,
                                                         std::optional<absl::Time> deadline, absl::Time now) const {
  PreparedRequest prepared;
  SchedulerRequest& request = prepared.request;
  MF_ASSIGN_OR_RETURN(request.prompt, Prompt(proto));

  request.max_new_tokens = std::min(kDefaultMaxNewTokens, limits_.max_new_tokens_limit);
  if (proto.has_max_new_tokens()) {
    if (proto.max_new_tokens() < 1 || proto.max_new_tokens() > limits_.max_new_tokens_limit) {
      return absl::InvalidArgumentError(absl::StrCat("max_new_tokens = ", proto.max_new_tokens(), " outside [1, ",
                                                     limits_.max_new_tokens_limit, "] (--max_new_tokens_limit)"));
    }
    request.max_new_tokens = proto.max_new_tokens();
  }

  if (proto.stop_sequences_size() > limits_.max_stop_sequences) {
    return absl::InvalidArgumentError(absl::StrCat("stop_sequences: ", proto.stop_sequences_size(),
                                                   " entries, more than the limit of ", limits_.max_stop_sequences,
                                                   " (--max_stop_sequences)"));
  }
  for (int i = 0; i < proto.stop_sequences_size(); ++i) {
    const std::string& stop = proto.stop_sequences(i);
    const std::string field = absl::StrCat("stop_sequences[", i, "]");
    MF_RETURN_IF_ERROR(CheckUtf8(field, stop));
    if (stop.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty"));
    if (static_cast<int64_t>(stop.size()) > limits_.max_stop_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": ", stop.size(), " bytes, more than the limit of ",
                                                     limits_.max_stop_bytes, " (--max_stop_bytes)"));
    }
    request.stop_sequences.push_back(stop);
  }

  const v1::Sampling& sampling = proto.sampling();
  request.sampling = {.temperature = sampling.temperature(),
                      .top_k = sampling.top_k(),
                      .top_p = sampling.top_p(),
                      .seed = sampling.seed()};
  if (absl::Status valid = ValidateSamplingParams(request.sampling, engine_.config().vocab_size); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.", valid.message()));
  }

  MF_RETURN_IF_ERROR(ApplyRouting(proto, deadline, now, prepared));
  return prepared;
}

absl::StatusOr<PreparedRequest> RequestBuilder::Score(const v1::ScoreRequest& proto, std::optional<absl::Time> deadline,
                                                      absl::Time now) const {
  PreparedRequest prepared;
  SchedulerRequest& request = prepared.request;
  MF_ASSIGN_OR_RETURN(request.prompt, Prompt(proto));
  switch (proto.continuation_case()) {
    case v1::ScoreRequest::kContinuationText: {
      MF_RETURN_IF_ERROR(CheckUtf8("continuation_text", proto.continuation_text()));
      if (proto.continuation_text().empty()) return absl::InvalidArgumentError("continuation_text: empty");
      absl::StatusOr<std::vector<int>> pieces = engine_.tokenizer().Encode(proto.continuation_text());
      if (!pieces.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("continuation_text: ", pieces.status().message()));
      }
      request.continuation.assign(pieces->begin(), pieces->end());
      break;
    }
    case v1::ScoreRequest::kContinuationTokenIds: {
      MF_ASSIGN_OR_RETURN(request.continuation,
                          CheckedIds("continuation_token_ids", proto.continuation_token_ids().ids()));
      break;
    }
    case v1::ScoreRequest::CONTINUATION_NOT_SET:
      return absl::InvalidArgumentError("continuation: missing (set continuation_text or continuation_token_ids)");
  }
  // A scored continuation costs what generating as many tokens would.
  if (static_cast<int64_t>(request.continuation.size()) > limits_.max_new_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat("continuation: ", request.continuation.size(),
                                                   " tokens, more than the limit of ", limits_.max_new_tokens_limit,
                                                   " (--max_new_tokens_limit)"));
  }
  MF_RETURN_IF_ERROR(ApplyRouting(proto, deadline, now, prepared));
  return prepared;
}

absl::StatusOr<v1::TokenizeResponse> RequestBuilder::Tokenize(const v1::TokenizeRequest& proto) const {
  v1::TokenizeResponse response;
  switch (proto.input_case()) {
    case v1::TokenizeRequest::kText: {
      MF_ASSIGN_OR_RETURN(const std::vector<int32_t> ids, PromptFromText("text", proto.text()));
      response.mutable_token_ids()->Add(ids.begin(), ids.end());
      break;
    }
    case v1::TokenizeRequest::kTokenIds: {
      const auto& ids = proto.token_ids().ids();
      absl::StatusOr<std::string> text = engine_.tokenizer().Decode(std::vector<int>(ids.begin(), ids.end()));
      if (!text.ok()) return absl::InvalidArgumentError(absl::StrCat("token_ids: ", text.status().message()));
      response.set_text(*std::move(text));
      break;
    }
    case v1::TokenizeRequest::INPUT_NOT_SET:
      return absl::InvalidArgumentError("input: missing (set text or token_ids)");
  }
  return response;
}

}  // namespace matformer::server
