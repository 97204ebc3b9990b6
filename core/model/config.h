#ifndef MATFORMER_CORE_MODEL_CONFIG_H_
#define MATFORMER_CORE_MODEL_CONFIG_H_

#include <cstdint>
#include <functional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace matformer {

enum class DType { kF32, kBF16 };
absl::string_view DTypeName(DType dtype);
size_t DTypeSize(DType dtype);

enum class Activation { kGeluTanh, kSilu };

// The dimensions of a MatFormer model with per-layer embeddings, as stored in
// config.json (docs/model-format.md lists every field and its limits).
struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int64_t ple_dim = 0;
  // FFN widths a layer may run at, strictly increasing; the last is intermediate_size.
  std::vector<int64_t> granularities;
  std::vector<std::string> granularity_names;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 0;
  Activation activation = Activation::kGeluTanh;
  DType dtype = DType::kF32;
  int bos_token_id = 0;
  int eos_token_id = 0;
  int pad_token_id = 0;

  // Parameters a token multiplies under a spec (the FFN width of every layer,
  // 0 for a skipped layer), for a model family whose layers differ from this
  // format's (Gemma 3n: AltUp, LAuReL, KV sharing). Unset: SubmodelSpec
  // computes it from the fields above.
  std::function<int64_t(const std::vector<int64_t>& layer_widths)> active_params;

  // Index of `width` in granularities, or -1.
  int GranularityIndex(int64_t width) const;
};

// Parses and validates config.json text. Errors name the field and the limit.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);
// Serialises back to config.json form (used by tools that write models).
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace matformer

#endif  // MATFORMER_CORE_MODEL_CONFIG_H_
