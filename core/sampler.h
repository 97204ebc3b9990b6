#ifndef MATFORMER_CORE_SAMPLER_H_
#define MATFORMER_CORE_SAMPLER_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace matformer {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;             // 0 = no limit
  float top_p = 1.0f;        // 1 = no nucleus cut
  uint64_t seed = 0;
};

// Checks the ranges (temperature in [0, 100], top_k in [0, vocab], top_p in
// (0, 1], all finite); errors name the field and the limit.
absl::Status ValidateSamplingParams(const SamplingParams& params, int64_t vocab_size);

// Picks next tokens from logits. Deterministic for a given seed: the same
// seed, logits and call sequence give the same tokens on every run.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}
  int32_t Sample(absl::Span<const float> logits);

 private:
  double Uniform();  // [0, 1), from the engine's raw bits (not a library distribution)
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

// Log-softmax of `logits` at `token` (for scoring).
double LogProbability(absl::Span<const float> logits, int32_t token);

// Finds the earliest stop sequence in generated text. Matches may span
// tokens, so the caller feeds the whole decoded text each time.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Position of the first stop sequence in `text`, or npos.
  size_t Find(const std::string& text) const;
  // How many trailing bytes of `text` could still become a stop sequence
  // (a streaming server holds them back until they are decided).
  size_t PendingSuffix(const std::string& text) const;

 private:
  std::vector<std::string> stops_;
};

}  // namespace matformer

#endif  // MATFORMER_CORE_SAMPLER_H_
