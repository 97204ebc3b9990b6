#ifndef MATFORMER_CORE_ENGINE_H_
#define MATFORMER_CORE_ENGINE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/kv/kv_cache.h"
#include "core/model/submodel.h"
#include "core/model/weights.h"
#include "core/ple/ple_cache.h"
#include "core/util/stage_profile.h"
#include "core/serving_engine.h"

namespace matformer {

// Runs forward steps over a batch of sequences of any submodels, off one
// packed copy of the weights. Owns the process's KV pool and PLE cache.
// Step() is not reentrant: one scheduler thread drives it; the kernels inside
// use all cores.
class Engine : public ServingEngine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::shared_ptr<const Model> model,
                                                        const EngineOptions& options);
  ~Engine() override;

  absl::StatusOr<std::vector<float>> Step(absl::Span<const StepInput> inputs) override;
  // Every spec SubmodelSpec::Create accepts for this config runs here.
  absl::Status ValidateSpec(const SubmodelSpec& spec) const override;
  std::unique_ptr<Sequence> NewSequence(const SubmodelSpec& spec) override {
    return std::make_unique<Sequence>(spec, kv_pool_.get());
  }

  const Model& model() const { return *model_; }
  const ModelConfig& config() const override { return model_->config(); }
  const Tokenizer& tokenizer() const override { return model_->tokenizer(); }
  bool IsEndOfSequence(int32_t token) const override { return token == config().eos_token_id; }
  // The format has no chat template (the default model is not chat-tuned).
  absl::StatusOr<std::string> FormatChat(
      const std::vector<std::pair<std::string, std::string>>& messages) const override;
  absl::string_view family() const override { return "matformer_ple"; }
  KvPool& kv_pool() override { return *kv_pool_; }
  PleCache& ple_cache() override { return *ple_cache_; }
  // Steps add their time per stage to `profile` until it is reset to null.
  void set_profile(StageProfile* profile) { profile_ = profile; }

 private:
  struct Scratch;
  Engine(std::shared_ptr<const Model> model, const EngineOptions& options);

  absl::Status Validate(absl::Span<const StepInput> inputs) const;
  void ComputePle(const std::vector<int32_t>& tokens, float* out);
  void RunLayer(int layer, absl::Span<const StepInput> inputs, const std::vector<int64_t>& row_begin);

  std::shared_ptr<const Model> model_;
  std::unique_ptr<KvPool> kv_pool_;
  std::unique_ptr<PleCache> ple_cache_;
  std::vector<float> rope_inv_freq_;
  std::unique_ptr<Scratch> scratch_;
  StageProfile* profile_ = nullptr;
};

}  // namespace matformer

#endif  // MATFORMER_CORE_ENGINE_H_
