#ifndef MATFORMER_CORE_MODEL_SUBMODEL_H_
#define MATFORMER_CORE_MODEL_SUBMODEL_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/config.h"

namespace matformer {

// A Mix'n'Match submodel of the one loaded MatFormer: an FFN width per layer
// (each one of the model's granularities) and a set of skipped layers. It holds
// no weights: every spec runs off the same packed copy.
class SubmodelSpec {
 public:
  // Validates `ffn_widths` (one per layer, each a granularity of `config`) and
  // `skipped_layers` (distinct, in range, not all layers).
  static absl::StatusOr<SubmodelSpec> Create(const ModelConfig& config, std::vector<int64_t> ffn_widths,
                                             const std::vector<int>& skipped_layers);
  // Every layer at one granularity, by name ("S") or width ("1536").
  static absl::StatusOr<SubmodelSpec> Uniform(const ModelConfig& config, absl::string_view granularity);
  // Parses a canonical name ("XL", "S-S-M-M-L-L", "S-skip-M-M-L-L") or the same
  // with widths in neurons ("192-192-384-384-768-1536").
  static absl::StatusOr<SubmodelSpec> Parse(const ModelConfig& config, absl::string_view text);
  static SubmodelSpec Full(const ModelConfig& config);
  SubmodelSpec() = default;  // an empty spec (no layers): a placeholder until assigned

  const std::string& name() const { return name_; }
  uint64_t hash() const { return hash_; }
  int64_t active_params() const { return active_params_; }
  int num_layers() const { return static_cast<int>(ffn_widths_.size()); }
  bool skipped(int layer) const { return skipped_[layer]; }
  // FFN width of `layer`; 0 when the layer is skipped.
  int64_t ffn_width(int layer) const { return skipped_[layer] ? 0 : ffn_widths_[layer]; }
  std::vector<int> SkippedLayers() const;
  // True when widths never decrease with depth (the MatFormer paper's heuristic).
  bool NonDecreasing() const;

  bool operator==(const SubmodelSpec& other) const { return name_ == other.name_; }

 private:
  std::vector<int64_t> ffn_widths_;
  std::vector<bool> skipped_;
  std::string name_;
  uint64_t hash_ = 0;
  int64_t active_params_ = 0;
};

// Parameters multiplied per token by a layer at FFN width `width` (0 = skipped).
int64_t LayerActiveParams(const ModelConfig& config, int64_t width);

}  // namespace matformer

#endif  // MATFORMER_CORE_MODEL_SUBMODEL_H_
