#ifndef MATFORMER_CORE_GEMMA3N_SERVING_H_
#define MATFORMER_CORE_GEMMA3N_SERVING_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "core/gemma3n/model.h"
#include "core/gemma3n/slicing.h"
#include "core/plan/planner.h"
#include "core/serving_engine.h"

// A Gemma 3n checkpoint behind the scheduler and planner: every request gets
// its own slice (a SubmodelSpec), all off the one loaded copy.
namespace matformer::gemma3n {

// Whether `model_dir/config.json` is a Gemma 3n config (model_type gemma3n or
// gemma3n_text); a missing or unreadable file is an error.
absl::StatusOr<bool> IsGemma3nDirectory(const std::string& model_dir);

// The serving layers' view of a Gemma 3n config: one granularity per multiple
// of the FFN granule up to intermediate_size (which must be the same for
// every layer), named by width; SubmodelSpec's active parameters are
// Slice::ActiveParams.
absl::StatusOr<ModelConfig> ServingConfig(const Config& config, int64_t ffn_granule);

// The slice a spec names: its widths on the kept layers, its skipped layers.
absl::StatusOr<Slice> SpecToSlice(const Config& config, int64_t ffn_granule, const SubmodelSpec& spec);

// The published slicing table (gemma3n-slicing-configs.csv) as the planner's
// quality table: one candidate per row, labelled with the row's name, with
// expected loss 1 - MMLU accuracy (so "lower is better" and the requests'
// max_expected_loss floor mean what they do for quality.json), best first
// (cheaper first at equal quality).
// A row that is not a valid slice of this model is an error naming it.
absl::StatusOr<std::vector<Candidate>> CandidatesFromSlicingTable(const Config& config, int64_t ffn_granule,
                                                                  const ModelConfig& serving,
                                                                  const std::string& csv_path);

class ServingModel : public ServingEngine {
 public:
  // Needs the checkpoint's tokenizer.model.
  static absl::StatusOr<std::unique_ptr<ServingModel>> Create(std::shared_ptr<const Model> model,
                                                              const EngineOptions& options);

  absl::StatusOr<std::vector<float>> Step(absl::Span<const matformer::StepInput> inputs) override;
  absl::Status ValidateSpec(const SubmodelSpec& spec) const override;
  std::unique_ptr<Sequence> NewSequence(const SubmodelSpec& spec) override;
  const ModelConfig& config() const override { return serving_config_; }
  const Tokenizer& tokenizer() const override { return *model_->tokenizer(); }
  bool IsEndOfSequence(int32_t token) const override;
  absl::StatusOr<std::string> FormatChat(
      const std::vector<std::pair<std::string, std::string>>& messages) const override;
  absl::string_view family() const override { return "gemma3n"; }
  KvPool& kv_pool() override { return *kv_pool_; }
  PleCache& ple_cache() override { return *ple_cache_; }

  const Model& model() const { return *model_; }

 private:
  ServingModel() = default;
  std::shared_ptr<const Model> model_;
  ModelConfig serving_config_;
  absl::flat_hash_set<int32_t> eos_;  // config, generation_config.json and <end_of_turn>
  std::unique_ptr<KvPool> kv_pool_;
  std::unique_ptr<PleCache> ple_cache_;
};

}  // namespace matformer::gemma3n

#endif  // MATFORMER_CORE_GEMMA3N_SERVING_H_
