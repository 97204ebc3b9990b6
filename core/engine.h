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

namespace matformer {

struct EngineOptions {
  int64_t kv_blocks = 1024;
  int kv_block_tokens = 16;
  size_t ple_cache_bytes = 64 << 20;
};

// One sequence being generated or scored: the submodel it runs and its KV
// blocks. The spec is fixed for the sequence's life (its KV depends on it).
struct Sequence {
  Sequence(SubmodelSpec spec, KvPool* pool) : spec(std::move(spec)), kv(pool) {}
  SubmodelSpec spec;
  KvSequence kv;
};

// The work of one sequence in one engine step: its next tokens (a prefill
// chunk, or the one token sampled last step).
struct StepInput {
  Sequence* sequence;
  absl::Span<const int32_t> tokens;
  // Logits for every token (scoring) instead of the last one only.
  bool all_logits = false;
};

// Runs forward steps over a batch of sequences of any submodels, off one
// packed copy of the weights. Owns the process's KV pool and PLE cache.
// Step() is not reentrant: one scheduler thread drives it; the kernels inside
// use all cores.
class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::shared_ptr<const Model> model,
                                                        const EngineOptions& options);
  ~Engine();

  // Runs every input's tokens through the model and appends them to its KV.
  // Returns the logits, [rows, vocab] row-major, rows in input order: one per
  // input (its last token), or one per token where all_logits is set. Fails
  // with nothing changed on a bad token id, a sequence past
  // max_position_embeddings, or a full KV pool (ResourceExhausted).
  absl::StatusOr<std::vector<float>> Step(absl::Span<const StepInput> inputs);

  std::unique_ptr<Sequence> NewSequence(const SubmodelSpec& spec) {
    return std::make_unique<Sequence>(spec, kv_pool_.get());
  }

  const Model& model() const { return *model_; }
  const ModelConfig& config() const { return model_->config(); }
  KvPool& kv_pool() { return *kv_pool_; }
  PleCache& ple_cache() { return *ple_cache_; }

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
};

}  // namespace matformer

#endif  // MATFORMER_CORE_ENGINE_H_
