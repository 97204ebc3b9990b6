#ifndef MATFORMER_CORE_GEMMA3N_CONFIG_H_
#define MATFORMER_CORE_GEMMA3N_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/model/config.h"

namespace matformer::gemma3n {

enum class LayerType { kSliding, kFull };

// The text model of a Hugging Face Gemma 3n checkpoint (Gemma3nTextConfig),
// read from config.json: either a text-only config or the `text_config` of the
// multimodal one. Every value the forward pass uses is here; nothing is
// assumed about E2B/E4B. Field names follow Hugging Face.
struct Config {
  int64_t vocab_size = 0;
  // Rows of the PLE table; token ids at or above it read PLE row 0 (as HF's
  // Gemma3nModel does for the multimodal soft tokens).
  int64_t vocab_size_per_layer_input = 0;
  int64_t hidden_size = 0;                  // d
  std::vector<int64_t> intermediate_size;   // per layer FFN width (the full width)
  int num_layers = 0;                       // L
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int64_t hidden_size_per_layer_input = 0;  // d_ple
  int64_t laurel_rank = 0;
  int altup_num_inputs = 0;                 // AltUp streams
  int altup_active_idx = 0;
  bool altup_correct_scale = true;
  double altup_coef_clip = 0.0;             // 0 = no clip
  std::vector<LayerType> layer_types;
  int64_t sliding_window = 0;
  double rope_theta_full = 0.0;
  double rope_theta_sliding = 0.0;
  int num_kv_shared_layers = 0;
  std::vector<double> activation_sparsity;  // per layer, 0 = dense
  double final_logit_softcapping = 0.0;     // 0 = none
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 0;
  Activation activation = Activation::kGeluTanh;
  int bos_token_id = 2;
  std::vector<int> eos_token_ids;  // config.json may give one id or a list
  int pad_token_id = 0;

  // First layer that reuses another layer's K/V (L - num_kv_shared_layers).
  int first_kv_shared_layer() const { return num_layers - num_kv_shared_layers; }
};

// For each layer: the layer whose K/V it attends over. A layer at or after
// first_kv_shared_layer() reuses the K/V of the last earlier non-shared layer
// of its type (HF's Gemma3nTextAttention with a cache); every other layer owns
// its K/V. Skipped layers (entries true in `skipped`, may be empty) get -1 and
// never serve as a source, which is what running HF on a checkpoint sliced by
// the MatFormer Lab rules computes (core/gemma3n/slicing.h explains). Fails if
// a kept shared layer has no kept source.
absl::StatusOr<std::vector<int>> KvSourceLayers(const Config& config, const std::vector<bool>& skipped);

// Parses config.json text. Errors name the field ("config.json: text_config.
// head_dim ...").
absl::StatusOr<Config> ParseConfig(absl::string_view json_text);
absl::StatusOr<Config> LoadConfig(const std::string& path);

}  // namespace matformer::gemma3n

#endif  // MATFORMER_CORE_GEMMA3N_CONFIG_H_
