#include "core/model/config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/util/files.h"
#include "core/util/json_fields.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace matformer {
namespace {

using Json = nlohmann::json;

constexpr absl::string_view kModelType = "matformer_ple";
// Matches the submodel name grammar (docs/model-format.md): a name must not be
// mistaken for the skip token or split at '-'.
constexpr absl::string_view kSkipToken = "skip";
constexpr size_t kMaxGranularities = 64;
constexpr size_t kMaxGranularityNameLength = 64;
constexpr int64_t kMaxConfigFileBytes = 1 << 20;

// The upper bounds keep every product of dimensions the engine forms (e.g.
// V * L * d_ple, V * d, d_ff * d) far below INT64_MAX, so later code can
// multiply sizes without overflow checks.
constexpr int64_t kMaxVocab = 1 << 20;
constexpr int64_t kMaxHidden = 1 << 16;
constexpr int64_t kMaxIntermediate = 1 << 20;
constexpr int64_t kMaxLayers = 256;
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxHeadDim = 1024;
constexpr int64_t kMaxPleDim = 1 << 16;
constexpr int64_t kMaxPositions = 1 << 20;

// A positive, finite number (rope_theta, rms_norm_eps).
absl::StatusOr<double> PositiveFinite(const JsonFields& fields, absl::string_view field) {
  MF_ASSIGN_OR_RETURN(const Json* value, fields.Get(field));
  MF_ASSIGN_OR_RETURN(const double number,
                      fields.CheckNumber(*value, field, -std::numeric_limits<double>::infinity(),
                                         std::numeric_limits<double>::infinity()));
  if (!std::isfinite(number) || number <= 0) {
    return fields.Error(field, absl::StrCat("= ", ShownJson(*value), " must be finite and > 0"));
  }
  return number;
}

absl::Status ParseGranularities(const JsonFields& fields, ModelConfig& config) {
  MF_ASSIGN_OR_RETURN(const Json* array, fields.Array("granularities", 1, kMaxGranularities));
  for (size_t i = 0; i < array->size(); ++i) {
    const std::string field = absl::StrCat("granularities[", i, "]");
    MF_ASSIGN_OR_RETURN(const int64_t width,
                        fields.CheckInt((*array)[i], field, 1, std::numeric_limits<int64_t>::max()));
    if (width > config.intermediate_size) {
      return fields.Error(field,
                          absl::StrCat("= ", width, " exceeds intermediate_size ", config.intermediate_size));
    }
    if (i > 0 && width <= config.granularities.back()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: granularities must be strictly increasing: ", field, " = ", width,
                       " <= granularities[", i - 1, "] = ", config.granularities.back()));
    }
    config.granularities.push_back(width);
  }
  if (config.granularities.back() != config.intermediate_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: granularities must end with intermediate_size ", config.intermediate_size,
                     ", the last is ", config.granularities.back()));
  }
  return absl::OkStatus();
}

absl::Status ParseGranularityNames(const JsonFields& fields, ModelConfig& config) {
  MF_ASSIGN_OR_RETURN(const Json* array, fields.Array("granularity_names", 1, kMaxGranularities));
  if (array->size() != config.granularities.size()) {
    return fields.Error("granularity_names", absl::StrCat("has ", array->size(), " entries, granularities has ",
                                                          config.granularities.size()));
  }
  absl::flat_hash_set<std::string> seen;
  for (size_t i = 0; i < array->size(); ++i) {
    const Json& entry = (*array)[i];
    const std::string field = absl::StrCat("granularity_names[", i, "]");
    MF_ASSIGN_OR_RETURN(const std::string name, fields.CheckString(entry, field));
    if (name.empty() || name.size() > kMaxGranularityNameLength) {
      return fields.Error(field, absl::StrCat("must have 1..", kMaxGranularityNameLength, " characters"));
    }
    for (unsigned char c : name) {
      if (c == '-' || absl::ascii_isspace(c) || absl::ascii_iscntrl(c)) {
        return fields.Error(
            field, absl::StrCat("= \"", name, "\" must not contain '-', whitespace or control characters"));
      }
    }
    if (name == kSkipToken) {
      return fields.Error(field, "must not be \"skip\" (reserved for skipped layers)");
    }
    // Submodel names accept widths in neurons as well as names, so an all-digit
    // name is only unambiguous when it is its own width.
    const bool all_digits = std::all_of(name.begin(), name.end(), absl::ascii_isdigit);
    if (all_digits && name != absl::StrCat(config.granularities[i])) {
      return fields.Error(
          field, absl::StrCat("= \"", name, "\" is a number other than its width ", config.granularities[i]));
    }
    if (!seen.insert(name).second) {
      return fields.Error(field, absl::StrCat("= \"", name, "\" is a duplicate"));
    }
    config.granularity_names.push_back(name);
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseRoot(const Json& root) {
  ModelConfig config;
  const JsonFields fields(root, "");

  MF_ASSIGN_OR_RETURN(const std::string model_type, fields.String("model_type"));
  if (model_type != kModelType) {
    return fields.Error("model_type",
                        absl::StrCat("= ", ShownJson(Json(model_type)), ", expected \"", kModelType, "\""));
  }

  MF_ASSIGN_OR_RETURN(config.vocab_size, fields.Int("vocab_size", 1, kMaxVocab));
  MF_ASSIGN_OR_RETURN(config.hidden_size, fields.Int("hidden_size", 2, kMaxHidden));
  if (config.hidden_size % 2 != 0) {
    return fields.Error("hidden_size", absl::StrCat("= ", config.hidden_size, " must be even"));
  }
  MF_ASSIGN_OR_RETURN(config.intermediate_size, fields.Int("intermediate_size", 1, kMaxIntermediate));
  MF_ASSIGN_OR_RETURN(config.num_layers, fields.Int("num_hidden_layers", 1, kMaxLayers));
  MF_ASSIGN_OR_RETURN(config.num_heads, fields.Int("num_attention_heads", 1, kMaxHeads));
  MF_ASSIGN_OR_RETURN(config.num_kv_heads, fields.Int("num_key_value_heads", 1, config.num_heads));
  if (config.num_heads % config.num_kv_heads != 0) {
    return fields.Error(
        "num_key_value_heads",
        absl::StrCat("= ", config.num_kv_heads, " must divide num_attention_heads ", config.num_heads));
  }
  MF_ASSIGN_OR_RETURN(config.head_dim, fields.Int("head_dim", 2, kMaxHeadDim));
  if (config.head_dim % 2 != 0) {
    return fields.Error("head_dim", absl::StrCat("= ", config.head_dim, " must be even (RoPE rotates pairs)"));
  }
  MF_ASSIGN_OR_RETURN(config.ple_dim, fields.Int("hidden_size_per_layer_input", 1, kMaxPleDim));
  MF_ASSIGN_OR_RETURN(config.max_position_embeddings,
                      fields.Int("max_position_embeddings", 1, kMaxPositions));

  MF_RETURN_IF_ERROR(ParseGranularities(fields, config));
  MF_RETURN_IF_ERROR(ParseGranularityNames(fields, config));

  MF_ASSIGN_OR_RETURN(config.rope_theta, PositiveFinite(fields, "rope_theta"));
  MF_ASSIGN_OR_RETURN(config.rms_norm_eps, PositiveFinite(fields, "rms_norm_eps"));

  MF_ASSIGN_OR_RETURN(const std::string activation, fields.String("hidden_activation"));
  if (activation == "gelu_pytorch_tanh") {
    config.activation = Activation::kGeluTanh;
  } else if (activation == "silu") {
    config.activation = Activation::kSilu;
  } else {
    return fields.Error("hidden_activation", absl::StrCat("= ", ShownJson(Json(activation)),
                                                          ", expected \"gelu_pytorch_tanh\" or \"silu\""));
  }

  MF_ASSIGN_OR_RETURN(const bool tie, fields.Bool("tie_word_embeddings"));
  if (!tie) {
    return fields.Error("tie_word_embeddings", "must be true (the LM head is embed_tokens)");
  }

  MF_ASSIGN_OR_RETURN(const std::string dtype, fields.String("torch_dtype"));
  if (dtype == "float32") {
    config.dtype = DType::kF32;
  } else if (dtype == "bfloat16") {
    config.dtype = DType::kBF16;
  } else {
    return fields.Error("torch_dtype",
                        absl::StrCat("= ", ShownJson(Json(dtype)), ", expected \"float32\" or \"bfloat16\""));
  }

  MF_ASSIGN_OR_RETURN(config.bos_token_id, fields.Int("bos_token_id", 0, config.vocab_size - 1));
  MF_ASSIGN_OR_RETURN(config.eos_token_id, fields.Int("eos_token_id", 0, config.vocab_size - 1));
  MF_ASSIGN_OR_RETURN(config.pad_token_id, fields.Int("pad_token_id", 0, config.vocab_size - 1));
  return config;
}

}  // namespace

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
  }
  return 0;
}

int ModelConfig::GranularityIndex(int64_t width) const {
  for (size_t i = 0; i < granularities.size(); ++i) {
    if (granularities[i] == width) return static_cast<int>(i);
  }
  return -1;
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text) {
  // The parser's exception is the only place its message (with the byte
  // position) is available; it is caught here so no exception leaves.
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: top level must be an object, got ", root.type_name()));
  }
  return ParseRoot(root);
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  MF_ASSIGN_OR_RETURN(const std::string text,
                      ReadBoundedFile(path, kMaxConfigFileBytes, absl::StrCat("config.json: '", path, "': ")));
  auto config = ParseModelConfig(text);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(config.status().message(), " (", path, ")"));
  }
  return config;
}

std::string ModelConfigToJson(const ModelConfig& config) {
  nlohmann::ordered_json json;
  json["model_type"] = std::string(kModelType);
  json["vocab_size"] = config.vocab_size;
  json["hidden_size"] = config.hidden_size;
  json["intermediate_size"] = config.intermediate_size;
  json["num_hidden_layers"] = config.num_layers;
  json["num_attention_heads"] = config.num_heads;
  json["num_key_value_heads"] = config.num_kv_heads;
  json["head_dim"] = config.head_dim;
  json["hidden_size_per_layer_input"] = config.ple_dim;
  json["granularities"] = config.granularities;
  json["granularity_names"] = config.granularity_names;
  json["rope_theta"] = config.rope_theta;
  json["rms_norm_eps"] = config.rms_norm_eps;
  json["max_position_embeddings"] = config.max_position_embeddings;
  json["hidden_activation"] = config.activation == Activation::kSilu ? "silu" : "gelu_pytorch_tanh";
  json["tie_word_embeddings"] = true;
  json["torch_dtype"] = config.dtype == DType::kBF16 ? "bfloat16" : "float32";
  json["bos_token_id"] = config.bos_token_id;
  json["eos_token_id"] = config.eos_token_id;
  json["pad_token_id"] = config.pad_token_id;
  return json.dump(2) + "\n";
}

}  // namespace matformer
