#include "core/gemma3n/config.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/util/files.h"
#include "core/util/json_fields.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace matformer::gemma3n {
namespace {

using Json = nlohmann::json;

// Bounds that keep every product of dimensions far below INT64_MAX (as in
// core/model/config.cc), generous enough for any published Gemma 3n.
constexpr int64_t kMaxVocab = 1 << 22;
constexpr int64_t kMaxHidden = 1 << 16;
constexpr int64_t kMaxIntermediate = 1 << 20;
constexpr int64_t kMaxLayers = 256;
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxHeadDim = 1024;
constexpr int64_t kMaxPleDim = 1 << 16;
constexpr int64_t kMaxPositions = 1 << 22;
constexpr int64_t kMaxAltUp = 16;
constexpr int64_t kMaxConfigBytes = 4 << 20;

absl::StatusOr<double> RopeTheta(const JsonFields& f, const Json& text, absl::string_view type,
                                 absl::string_view legacy_field) {
  if (f.Has("rope_parameters")) {
    const Json& params = text["rope_parameters"];
    const std::string field = absl::StrCat("rope_parameters.", type);
    if (!params.is_object() || !params.contains(std::string(type)) || !params[std::string(type)].is_object()) {
      return f.Error(field, "is missing (rope_parameters needs full_attention and sliding_attention)");
    }
    const JsonFields rope(params[std::string(type)], "");
    if (rope.Has("rope_type")) {
      MF_ASSIGN_OR_RETURN(std::string rope_type, rope.String("rope_type"));
      if (rope_type != "default") {
        return absl::UnimplementedError(
            absl::StrCat("config.json: ", field, ".rope_type '", rope_type, "' is not supported (only 'default')"));
      }
    }
    if (!rope.Has("rope_theta")) return f.Error(absl::StrCat(field, ".rope_theta"), "is missing");
    return f.CheckNumber(params[std::string(type)]["rope_theta"], absl::StrCat(field, ".rope_theta"), 1e-6, 1e12);
  }
  // Older configs (as published in 2025): rope_theta for full attention,
  // rope_local_base_freq for sliding attention, and no rope_scaling.
  if (f.Has("rope_scaling")) {
    return absl::UnimplementedError("config.json: rope_scaling is not supported");
  }
  return f.Number(legacy_field, 1e-6, 1e12);
}

}  // namespace

absl::StatusOr<std::vector<int>> KvSourceLayers(const Config& c, const std::vector<bool>& skipped) {
  auto is_skipped = [&](int layer) { return !skipped.empty() && skipped[layer]; };
  std::vector<int> source(c.num_layers, -1);
  const int first_shared = c.first_kv_shared_layer();
  for (int layer = 0; layer < c.num_layers; ++layer) {
    if (is_skipped(layer)) continue;
    if (layer < first_shared || first_shared == 0) {
      // HF shares only when some layer owns K/V (first_kv_shared_layer_idx > 0).
      source[layer] = layer;
      continue;
    }
    for (int candidate = first_shared - 1; candidate >= 0; --candidate) {
      if (c.layer_types[candidate] == c.layer_types[layer] && !is_skipped(candidate)) {
        source[layer] = candidate;
        break;
      }
    }
    if (source[layer] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer, " shares K/V (num_kv_shared_layers = ", c.num_kv_shared_layers,
          ") but no earlier ", skipped.empty() ? "" : "kept ", "non-shared layer has its layer type ",
          c.layer_types[layer] == LayerType::kFull ? "full_attention" : "sliding_attention"));
    }
  }
  return source;
}

absl::StatusOr<Config> ParseConfig(absl::string_view json_text) {
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config.json is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) return absl::InvalidArgumentError("config.json must hold a JSON object");

  // The multimodal checkpoints nest the language model's config.
  std::string prefix;
  const Json* text = &root;
  if (root.contains("text_config")) {
    text = &root["text_config"];
    prefix = "text_config.";
    if (!text->is_object()) return absl::InvalidArgumentError("config.json: text_config must be an object");
  }
  const JsonFields f(*text, prefix);
  MF_ASSIGN_OR_RETURN(std::string model_type, f.String("model_type"));
  if (model_type != "gemma3n_text") {
    return f.Error("model_type", absl::StrCat("is '", model_type, "', expected 'gemma3n_text'"));
  }

  Config c;
  MF_ASSIGN_OR_RETURN(c.vocab_size, f.Int("vocab_size", 1, kMaxVocab));
  MF_ASSIGN_OR_RETURN(c.vocab_size_per_layer_input, f.Int("vocab_size_per_layer_input", 1, kMaxVocab));
  MF_ASSIGN_OR_RETURN(c.hidden_size, f.Int("hidden_size", 1, kMaxHidden));
  MF_ASSIGN_OR_RETURN(c.num_layers, f.Int("num_hidden_layers", 1, kMaxLayers));
  MF_ASSIGN_OR_RETURN(c.num_heads, f.Int("num_attention_heads", 1, kMaxHeads));
  MF_ASSIGN_OR_RETURN(c.num_kv_heads, f.Int("num_key_value_heads", 1, c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return f.Error("num_key_value_heads", absl::StrCat("= ", c.num_kv_heads, " must divide num_attention_heads = ",
                                                       c.num_heads));
  }
  MF_ASSIGN_OR_RETURN(c.head_dim, f.Int("head_dim", 2, kMaxHeadDim));
  if (c.head_dim % 2 != 0) return f.Error("head_dim", "must be even (RoPE rotates halves)");
  MF_ASSIGN_OR_RETURN(c.hidden_size_per_layer_input, f.Int("hidden_size_per_layer_input", 1, kMaxPleDim));
  MF_ASSIGN_OR_RETURN(c.laurel_rank, f.Int("laurel_rank", 1, kMaxHidden));
  MF_ASSIGN_OR_RETURN(c.altup_num_inputs, f.Int("altup_num_inputs", 1, kMaxAltUp));
  MF_ASSIGN_OR_RETURN(c.altup_active_idx, f.Int("altup_active_idx", 0, c.altup_num_inputs - 1));
  MF_ASSIGN_OR_RETURN(c.altup_correct_scale, f.Bool("altup_correct_scale"));
  if (f.Has("altup_coef_clip")) {
    MF_ASSIGN_OR_RETURN(c.altup_coef_clip, f.Number("altup_coef_clip", 0.0, 1e30));
  }
  MF_ASSIGN_OR_RETURN(c.num_kv_shared_layers, f.Int("num_kv_shared_layers", 0, c.num_layers - 1));
  MF_ASSIGN_OR_RETURN(c.sliding_window, f.Int("sliding_window", 1, kMaxPositions));
  MF_ASSIGN_OR_RETURN(c.rms_norm_eps, f.Number("rms_norm_eps", 1e-12, 1.0));
  MF_ASSIGN_OR_RETURN(c.max_position_embeddings, f.Int("max_position_embeddings", 1, kMaxPositions));
  if (f.Has("final_logit_softcapping")) {
    MF_ASSIGN_OR_RETURN(c.final_logit_softcapping, f.Number("final_logit_softcapping", 0.0, 1e30));
  }
  MF_ASSIGN_OR_RETURN(std::string activation, f.String("hidden_activation"));
  if (activation == "gelu_pytorch_tanh") {
    c.activation = Activation::kGeluTanh;
  } else if (activation == "silu") {
    c.activation = Activation::kSilu;
  } else {
    return f.Error("hidden_activation", absl::StrCat("'", activation, "' is not supported (gelu_pytorch_tanh, silu)"));
  }
  MF_ASSIGN_OR_RETURN(c.rope_theta_full, RopeTheta(f, *text, "full_attention", "rope_theta"));
  MF_ASSIGN_OR_RETURN(c.rope_theta_sliding, RopeTheta(f, *text, "sliding_attention", "rope_local_base_freq"));

  // intermediate_size: one width for all layers, or one per layer.
  MF_ASSIGN_OR_RETURN(const Json* intermediate, f.Get("intermediate_size"));
  if (intermediate->is_array()) {
    MF_ASSIGN_OR_RETURN(intermediate, f.Array("intermediate_size", c.num_layers, c.num_layers));
    for (size_t i = 0; i < intermediate->size(); ++i) {
      MF_ASSIGN_OR_RETURN(int64_t width, f.CheckInt((*intermediate)[i], absl::StrCat("intermediate_size[", i, "]"), 1,
                                                    kMaxIntermediate));
      c.intermediate_size.push_back(width);
    }
  } else {
    MF_ASSIGN_OR_RETURN(int64_t width, f.CheckInt(*intermediate, "intermediate_size", 1, kMaxIntermediate));
    c.intermediate_size.assign(c.num_layers, width);
  }

  MF_ASSIGN_OR_RETURN(const Json* types, f.Array("layer_types", c.num_layers, c.num_layers));
  for (size_t i = 0; i < types->size(); ++i) {
    const Json& type = (*types)[i];
    if (type == "sliding_attention") {
      c.layer_types.push_back(LayerType::kSliding);
    } else if (type == "full_attention") {
      c.layer_types.push_back(LayerType::kFull);
    } else {
      return f.Error(absl::StrCat("layer_types[", i, "]"),
                     absl::StrCat("= ", ShownJson(type), " must be \"sliding_attention\" or \"full_attention\""));
    }
  }

  MF_ASSIGN_OR_RETURN(const Json* sparsity, f.Array("activation_sparsity_pattern", c.num_layers, c.num_layers));
  for (size_t i = 0; i < sparsity->size(); ++i) {
    // 1.0 would put the cutoff at +inf (icdf(1)); HF would zero the whole FFN through NaNs.
    MF_ASSIGN_OR_RETURN(double s, f.CheckNumber((*sparsity)[i], absl::StrCat("activation_sparsity_pattern[", i, "]"),
                                                0.0, 0.999999));
    c.activation_sparsity.push_back(s);
  }

  if (f.Has("bos_token_id")) {
    MF_ASSIGN_OR_RETURN(c.bos_token_id, f.Int("bos_token_id", 0, c.vocab_size - 1));
  }
  if (f.Has("pad_token_id")) {
    MF_ASSIGN_OR_RETURN(c.pad_token_id, f.Int("pad_token_id", 0, c.vocab_size - 1));
  }
  if (f.Has("eos_token_id")) {
    const Json& eos = (*text)["eos_token_id"];
    if (eos.is_array()) {
      for (size_t i = 0; i < eos.size(); ++i) {
        MF_ASSIGN_OR_RETURN(int64_t id, f.CheckInt(eos[i], absl::StrCat("eos_token_id[", i, "]"), 0, c.vocab_size - 1));
        c.eos_token_ids.push_back(static_cast<int>(id));
      }
    } else {
      MF_ASSIGN_OR_RETURN(int64_t id, f.CheckInt(eos, "eos_token_id", 0, c.vocab_size - 1));
      c.eos_token_ids.push_back(static_cast<int>(id));
    }
  }
  if (f.Has("tie_word_embeddings")) {
    MF_ASSIGN_OR_RETURN(bool tied, f.Bool("tie_word_embeddings"));
    if (!tied) return f.Error("tie_word_embeddings", "must be true (the LM head is embed_tokens)");
  }
  if (f.Has("attention_bias")) {
    MF_ASSIGN_OR_RETURN(bool bias, f.Bool("attention_bias"));
    if (bias) return absl::UnimplementedError(absl::StrCat("config.json: ", prefix, "attention_bias = true is not supported"));
  }
  MF_RETURN_IF_ERROR(KvSourceLayers(c, {}).status());
  return c;
}

absl::StatusOr<Config> LoadConfig(const std::string& path) {
  MF_ASSIGN_OR_RETURN(const std::string text, ReadBoundedFile(path, kMaxConfigBytes, absl::StrCat("'", path, "': ")));
  return ParseConfig(text);
}

}  // namespace matformer::gemma3n
