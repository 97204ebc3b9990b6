#ifndef MATFORMER_CORE_MODEL_WEIGHTS_H_
#define MATFORMER_CORE_MODEL_WEIGHTS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/kernels/matmul.h"
#include "core/model/config.h"
#include "core/model/safetensors.h"
#include "core/model/tokenizer.h"

namespace matformer {

// One decoder layer. The FFN is stored as one slab per granularity increment:
// slab j holds neurons [granularities[j-1], granularities[j]) (gate/up rows,
// down columns), so a row at width granularities[j] runs slabs 0..j.
struct LayerWeights {
  std::vector<float> input_norm, post_attention_norm, post_ple_norm;
  PackedMatrix q, k, v, o;
  std::vector<PackedMatrix> gate, up, down;
  PackedMatrix ple_gate, ple_projection;
};

struct ModelWeights {
  TensorView embed;      // [V, d], rows looked up from the mapping
  TensorView ple_table;  // [V, L * d_ple], stays in the mapping
  PackedMatrix ple_model_projection;
  std::vector<float> ple_projection_norm, final_norm;
  PackedMatrix lm_head;  // the tied embedding, packed for the logits matmul
  std::vector<LayerWeights> layers;
};

// A loaded model directory: config.json, model.safetensors (mapped read-only),
// tokenizer.model. Immutable after Load, shared by every request.
class Model {
 public:
  // Validates everything: config fields, every expected tensor present with
  // its shape and the config's dtype, no unexpected tensors, tokenizer fits.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& directory);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const SafetensorsFile& file() const { return *file_; }
  const std::string& directory() const { return directory_; }
  // Bytes of packed weights held in memory (everything but the mapped tables).
  size_t packed_bytes() const { return packed_bytes_; }

 private:
  Model() = default;
  std::string directory_;
  ModelConfig config_;
  std::unique_ptr<SafetensorsFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ModelWeights weights_;
  size_t packed_bytes_ = 0;
};

// A tensor that a model of some config must hold (docs/model-format.md).
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool is_norm;  // an RMSNorm weight (1-D); everything else is a matrix or a table
};
// Exactly the tensors of a model of `config`, in file order: the one list the
// loader validates against and the model writers produce.
std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& config);

// Loads and validates the weights of `config` from `file` (exposed for tests).
absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& config, const SafetensorsFile& file);

}  // namespace matformer

#endif  // MATFORMER_CORE_MODEL_WEIGHTS_H_
