#ifndef MATFORMER_CORE_MODEL_RANDOM_MODEL_H_
#define MATFORMER_CORE_MODEL_RANDOM_MODEL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "core/model/config.h"

namespace matformer {

// Writes a complete model directory with random weights (normal, std 0.02;
// norms 1): config.json, model.safetensors, and a copy of `tokenizer_path` as
// tokenizer.model. For tests and for benchmarks at realistic sizes.
absl::Status WriteRandomModel(const ModelConfig& config, uint64_t seed, const std::string& directory,
                              const std::string& tokenizer_path);

// Parameters stored in a model of `config` (all tensors, PLE table included).
int64_t StoredParameterCount(const ModelConfig& config);

}  // namespace matformer

#endif  // MATFORMER_CORE_MODEL_RANDOM_MODEL_H_
