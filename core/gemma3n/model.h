#ifndef MATFORMER_CORE_GEMMA3N_MODEL_H_
#define MATFORMER_CORE_GEMMA3N_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/gemma3n/config.h"
#include "core/gemma3n/slicing.h"
#include "core/gemma3n/weights.h"
#include "core/kv/kv_cache.h"
#include "core/model/tokenizer.h"
#include "core/ple/ple_cache.h"

namespace matformer::gemma3n {

// The K/V of one sequence, paged in blocks of a KvPool made by
// Model::NewKvPool (the engine's pool: keys transposed per block tile): for
// every layer that owns K/V under the sequence's slice, the RMS-normed,
// RoPE'd keys and the normed values of every position so far. KV-shared
// layers read their source layer's blocks; sliding layers mask to their
// window at attention time. The blocks return to the pool when it is destroyed.
class KvCache {
 public:
  // Blocks of its own, from `pool`.
  explicit KvCache(KvPool* pool) : owned_(std::make_unique<KvSequence>(pool)), kv_(owned_.get()) {}
  // Blocks held by `kv` (the server's Sequence, whose blocks the scheduler
  // reserves), which must outlive the cache.
  explicit KvCache(KvSequence* kv) : kv_(kv) {}

  KvSequence& kv() const { return *kv_; }
  int64_t length() const { return kv_->length(); }
  std::vector<int> kv_source;  // the slice's sources, fixed by the first step

 private:
  std::unique_ptr<KvSequence> owned_;
  KvSequence* kv_;
};

// Called with the AltUp streams [N][R][d] of the R rows of a step (the
// tokens of all inputs, in input order): layer -1 is the input to layer 0,
// layer l the output of layer l (the unchanged input of rows that skip it).
// For debugging against golden states.
using LayerObserver = std::function<void(int layer, absl::Span<const float> streams)>;

struct ForwardOptions {
  // Logits of every token ([T, V]) instead of the last one's ([V]).
  bool all_logits = false;
  // Per-layer inputs by token id (L * d_ple floats each): they depend on the
  // token only, so one cache serves every sequence and every slice.
  PleCache* ple_cache = nullptr;
  const LayerObserver* observer = nullptr;
};

// One sequence's part of a Step: its next tokens (a prefill chunk or one
// decode token) under its slice, appended to its cache.
struct StepInput {
  const Slice* slice = nullptr;
  KvCache* cache = nullptr;
  absl::Span<const int32_t> tokens;
  bool all_logits = false;  // logits of every token instead of the last one's
};

struct StepOptions {
  PleCache* ple_cache = nullptr;  // as ForwardOptions::ple_cache
  const LayerObserver* observer = nullptr;
};

// A loaded Hugging Face Gemma 3n text model. Immutable after Load; steps may
// run concurrently on different caches.
class Model {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& directory, const LoadOptions& options = {});

  const Config& config() const { return config_; }
  const std::string& directory() const { return directory_; }
  const Weights& weights() const { return weights_; }
  int64_t ffn_granule() const { return options_.ffn_granule; }
  const Checkpoint& checkpoint() const { return *checkpoint_; }
  // The directory's tokenizer.model (SentencePiece), or null when there is
  // none (token ids still work).
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }

  // A pool of `num_blocks` KV blocks of `block_tokens` positions for this
  // model's caches: one pool layer per layer that owns K/V in the full model
  // (a slice's owners are a subset: skipping never moves a K/V source).
  std::unique_ptr<KvPool> NewKvPool(int64_t num_blocks, int block_tokens = 16, KvDtype dtype = KvDtype::kF32) const;
  // Pool layers of NewKvPool: how many, and which one holds layer l's K/V (-1: none).
  int num_kv_layers() const { return num_kv_layers_; }
  int kv_pool_layer(int layer) const { return kv_pool_layer_[layer]; }

  // A slice of this model (Slice::Create with the model's FFN granule).
  absl::StatusOr<Slice> MakeSlice(const std::vector<int64_t>& widths_of_kept_layers,
                                  const std::vector<int>& skipped_layers, std::string name = "") const;

  // Runs `tokens` at positions cache.length, cache.length + 1, ... through
  // `slice`, appends their K/V to `cache`, and returns the soft-capped
  // logits: [T, V] row-major if options.all_logits, else the last token's
  // [V]. The cache's blocks are reserved first (ResourceExhausted when its
  // pool is short). A cache keeps the skipped layers of its first step's slice; FFN
  // widths may change from step to step (they do not touch K/V). On an error
  // nothing has changed.
  absl::StatusOr<std::vector<float>> Forward(const Slice& slice, absl::Span<const int32_t> tokens, KvCache& cache,
                                             const ForwardOptions& options = {}) const;

  // One step over several sequences, each with its own slice and cache (at
  // most once per step): every matmul runs over the rows of all sequences
  // that keep the layer, the FFN over rows sorted widest first so that slab j
  // covers a prefix of them. Returns the logits rows in input order (each
  // input's last token, or all its tokens). Same checks and guarantees as
  // Forward, which is a one-input Step.
  absl::StatusOr<std::vector<float>> Step(absl::Span<const StepInput> inputs, const StepOptions& options = {}) const;

 private:
  Model() = default;
  std::string directory_;
  Config config_;
  LoadOptions options_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<Tokenizer> tokenizer_;
  Weights weights_;
  std::vector<float> inv_freq_full_, inv_freq_sliding_;  // RoPE, head_dim / 2 each
  std::vector<int> kv_pool_layer_;  // per layer; -1 for KV-shared layers
  int num_kv_layers_ = 0;
  std::vector<float> sparsity_z_;  // per layer: standard normal quantile of its sparsity (0 = dense)

  absl::Status CheckInput(const StepInput& input) const;
};

// The standard normal quantile (inverse CDF) at p in (0, 1), to double precision.
double NormalQuantile(double p);

}  // namespace matformer::gemma3n

#endif  // MATFORMER_CORE_GEMMA3N_MODEL_H_
