#ifndef MATFORMER_CORE_GEMMA3N_WEIGHTS_H_
#define MATFORMER_CORE_GEMMA3N_WEIGHTS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/gemma3n/config.h"
#include "core/kernels/matmul.h"
#include "core/model/safetensors.h"

namespace matformer::gemma3n {

// The safetensors files of a Hugging Face checkpoint directory: a single
// model.safetensors, or the shards named by model.safetensors.index.json.
// Only shards that hold language-model tensors are opened (mapped, header
// parsed); vision and audio tensors are never read.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& directory);

  // "model.language_model." (multimodal and published text checkpoints) or
  // "model." (a text-only Gemma3nForCausalLM saved without the prefix).
  const std::string& prefix() const { return prefix_; }
  // Language-model tensor by its name after the prefix ("norm.weight").
  absl::StatusOr<TensorView> Get(absl::string_view name) const;
  bool Contains(absl::string_view name) const { return tensors_.contains(name); }
  // Names after the prefix, sorted.
  std::vector<std::string> Names() const;
  size_t num_files() const { return files_.size(); }
  const SafetensorsFile& file(size_t i) const { return *files_[i]; }

 private:
  std::string prefix_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  absl::flat_hash_map<std::string, TensorView> tensors_;  // views into files_
};

// One decoder layer. Matrices are nn.Linear [out, in]; small AltUp matrices
// stay as row-major floats and are applied with plain loops.
struct LayerWeights {
  // AltUp: predict the streams from the current ones, correct them from the
  // active stream's layer output.
  std::vector<float> router_norm;          // [d]
  std::vector<float> modality_router;      // [N, d]
  std::vector<float> prediction_coefs;     // [N*N, N]
  std::vector<float> correction_coefs;     // [N, N], clipped to altup_coef_clip as HF does
  std::vector<float> correct_output_scale; // [d]

  // Attention. k/v/k_norm are empty in KV-shared layers: they attend over the
  // K/V of their source layer (Config::KvSourceLayers).
  std::vector<float> input_norm, q_norm, k_norm, post_attention_norm;  // [d], [hd], [hd], [d]
  PackedMatrix q, k, v, o;

  // LAuReL: x + norm(right(left(x))).
  PackedMatrix laurel_left, laurel_right;
  std::vector<float> post_laurel_norm;

  // Nested FFN: slab j holds neurons [ffn_slab_ends[j-1], ffn_slab_ends[j])
  // (gate/up rows, down columns), so a width that is a slab end runs slabs
  // 0..j with no copy.
  std::vector<float> pre_ffw_norm, post_ffw_norm;
  std::vector<int64_t> ffn_slab_ends;
  std::vector<PackedMatrix> gate, up, down;

  // Per-layer input injection.
  PackedMatrix per_layer_input_gate, per_layer_projection;  // [d_ple, d], [d, d_ple]
  std::vector<float> post_per_layer_input_norm;
};

struct Weights {
  TensorView embed;            // [V, d] in the mapping; rows are looked up
  TensorView per_layer_embed;  // [V_ple, L * d_ple] in the mapping, never copied
  PackedMatrix per_layer_model_projection;  // [L * d_ple, d]
  std::vector<float> per_layer_projection_norm;  // [d_ple]
  std::vector<PackedMatrix> altup_projections, altup_unembed_projections;  // N - 1 each, [d, d]
  std::vector<float> final_norm;
  PackedMatrix lm_head;  // the tied embedding, packed for the logits matmul
  std::vector<LayerWeights> layers;
};

// A tensor the language model of `config` reads, by its name after the prefix.
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool required;  // false: K/V projections of KV-shared layers (checked if present, unused)
};
std::vector<ExpectedTensor> ExpectedTensors(const Config& config);

struct LoadOptions {
  // FFN slab width: a slice may run a layer at any multiple of it (or the
  // layer's full width). 2048 is the step of the published E2B..E4B slices.
  int64_t ffn_granule = 2048;
};

// Every expected tensor present with its shape, and no unknown language-model tensor.
absl::Status ValidateCheckpoint(const Config& config, const Checkpoint& checkpoint);

// Validates (every expected tensor present with its shape, no unknown
// language-model tensor) and packs the weights.
absl::StatusOr<Weights> LoadWeights(const Config& config, const Checkpoint& checkpoint, const LoadOptions& options);

}  // namespace matformer::gemma3n

#endif  // MATFORMER_CORE_GEMMA3N_WEIGHTS_H_
