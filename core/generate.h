#ifndef MATFORMER_CORE_GENERATE_H_
#define MATFORMER_CORE_GENERATE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/engine.h"
#include "core/sampler.h"

namespace matformer {

enum class FinishReason { kLength, kStop, kEndOfSequence };
absl::string_view FinishReasonName(FinishReason reason);

struct GenerateRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int max_new_tokens = 32;
  std::vector<std::string> stop_sequences;
  int prefill_chunk = 256;  // prompt tokens per engine step
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated tokens (the stop sequence's tokens included)
  std::string text;             // decoded, cut before a stop sequence
  FinishReason finish_reason = FinishReason::kLength;
};

// Generates for one sequence alone on `engine` (the CLI, tests and benchmarks;
// the server batches many sequences through the scheduler instead).
absl::StatusOr<GenerateResult> GenerateAlone(Engine& engine, const SubmodelSpec& spec,
                                             const GenerateRequest& request);

}  // namespace matformer

#endif  // MATFORMER_CORE_GENERATE_H_
