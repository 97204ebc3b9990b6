#ifndef MATFORMER_CORE_SERVING_ENGINE_H_
#define MATFORMER_CORE_SERVING_ENGINE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/kv/kv_cache.h"
#include "core/model/config.h"
#include "core/model/submodel.h"
#include "core/model/tokenizer.h"
#include "core/ple/ple_cache.h"

namespace matformer {

// The sizes of what a serving engine owns: its KV pool (CheckKvPoolOptions
// says the limits) and its PLE cache.
struct EngineOptions {
  int64_t kv_blocks = 1024;
  int kv_block_tokens = 16;
  // How the pool stores keys and values; unset: the model's weight dtype.
  std::optional<KvDtype> kv_dtype = std::nullopt;
  size_t ple_cache_bytes = 64 << 20;
};

// One sequence being generated or scored: the submodel it runs and its KV
// blocks. The spec is fixed for the sequence's life (its KV depends on it).
// An engine may attach its own per-sequence state by deriving from it.
struct Sequence {
  Sequence(SubmodelSpec spec, KvPool* pool) : spec(std::move(spec)), kv(pool) {}
  virtual ~Sequence() = default;
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

// What the scheduler, the planner and the server need of a loaded elastic
// model: steps over batches of sequences of any submodels, off one copy of
// the weights, with one KV pool and one PLE cache. Two model families
// implement it: the repo's MatFormer format (Engine, core/engine.h) and
// Hugging Face Gemma 3n checkpoints (gemma3n::ServingModel,
// core/gemma3n/serving.h). Step() is not reentrant: one scheduler thread
// drives it.
class ServingEngine {
 public:
  virtual ~ServingEngine() = default;

  // Runs every input's tokens through the model and appends them to its KV.
  // Returns the logits, [rows, vocab] row-major, rows in input order: one per
  // input (its last token), or one per token where all_logits is set. Fails
  // with nothing changed on a bad token id, a sequence past
  // max_position_embeddings, or a full KV pool (ResourceExhausted).
  virtual absl::StatusOr<std::vector<float>> Step(absl::Span<const StepInput> inputs) = 0;

  // Whether this model can run `spec`, beyond what SubmodelSpec::Create
  // checks (Gemma 3n: widths on its slab boundaries, no skipped K/V source).
  virtual absl::Status ValidateSpec(const SubmodelSpec& spec) const = 0;
  // A new sequence of a spec that ValidateSpec accepted.
  virtual std::unique_ptr<Sequence> NewSequence(const SubmodelSpec& spec) = 0;

  // The model's dimensions as the serving layers see them: granularities are
  // the FFN widths a spec may use per layer.
  virtual const ModelConfig& config() const = 0;
  virtual const Tokenizer& tokenizer() const = 0;
  virtual bool IsEndOfSequence(int32_t token) const = 0;
  // The prompt text of chat messages (role, content) under the model's chat
  // template; InvalidArgument when the model has none or a role is out of order.
  virtual absl::StatusOr<std::string> FormatChat(
      const std::vector<std::pair<std::string, std::string>>& messages) const = 0;
  // "matformer_ple" or "gemma3n".
  virtual absl::string_view family() const = 0;

  virtual KvPool& kv_pool() = 0;
  virtual PleCache& ple_cache() = 0;
};

}  // namespace matformer

#endif  // MATFORMER_CORE_SERVING_ENGINE_H_
