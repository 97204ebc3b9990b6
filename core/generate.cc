#include "core/generate.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace matformer {

absl::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kEndOfSequence:
      return "eos";
  }
  return "unknown";
}

absl::StatusOr<GenerateResult> GenerateAlone(Engine& engine, const SubmodelSpec& spec,
                                             const GenerateRequest& request) {
  const ModelConfig& config = engine.config();
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: empty (at least one token)");
  if (request.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens = ", request.max_new_tokens, " must be >= 1"));
  }
  MF_RETURN_IF_ERROR(ValidateSamplingParams(request.sampling, config.vocab_size));
  std::unique_ptr<Sequence> sequence = engine.NewSequence(spec);
  Sampler sampler(request.sampling);
  StopMatcher stops(request.stop_sequences);
  const Tokenizer& tokenizer = engine.model().tokenizer();

  std::vector<float> logits;
  for (size_t begin = 0; begin < request.prompt.size(); begin += request.prefill_chunk) {
    const size_t count = std::min<size_t>(request.prefill_chunk, request.prompt.size() - begin);
    StepInput input{sequence.get(), absl::MakeConstSpan(request.prompt).subspan(begin, count)};
    MF_ASSIGN_OR_RETURN(logits, engine.Step({&input, 1}));
  }
  GenerateResult result;
  while (true) {
    const int32_t token = sampler.Sample(logits);
    if (token == config.eos_token_id) {
      result.finish_reason = FinishReason::kEndOfSequence;
      break;
    }
    result.tokens.push_back(token);
    MF_ASSIGN_OR_RETURN(result.text, tokenizer.Decode(result.tokens));
    if (const size_t stop = stops.Find(result.text); stop != std::string::npos) {
      result.text.resize(stop);
      result.finish_reason = FinishReason::kStop;
      break;
    }
    if (static_cast<int>(result.tokens.size()) >= request.max_new_tokens) break;
    StepInput input{sequence.get(), absl::MakeConstSpan(&result.tokens.back(), 1)};
    MF_ASSIGN_OR_RETURN(logits, engine.Step({&input, 1}));
  }
  return result;
}

}  // namespace matformer
