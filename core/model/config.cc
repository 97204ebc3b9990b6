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

// A value as it appears in the file, cut short so a huge value cannot flood the message.
std::string Shown(const Json& json) {
  constexpr size_t kMaxShown = 80;
  std::string text = json.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > kMaxShown) text = absl::StrCat(text.substr(0, kMaxShown), "...");
  return text;
}

absl::Status FieldError(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", field, " ", message));
}

absl::StatusOr<const Json*> GetField(const Json& root, absl::string_view field) {
  auto it = root.find(std::string(field));
  if (it == root.end()) return FieldError(field, "is missing");
  return &*it;
}

// Checks that `json` is an integer in [min, max].
absl::StatusOr<int64_t> CheckedInt(const Json& json, absl::string_view field, int64_t min, int64_t max) {
  if (!json.is_number_integer()) {
    return FieldError(field, absl::StrCat("must be an integer, got ", json.type_name(), " ", Shown(json)));
  }
  // The parser stores every non-negative integer as unsigned; values above
  // INT64_MAX would wrap in get<int64_t>().
  const bool in_range = json.is_number_unsigned() ? json.get<uint64_t>() <= static_cast<uint64_t>(max) &&
                                                        static_cast<int64_t>(json.get<uint64_t>()) >= min
                                                  : json.get<int64_t>() >= min && json.get<int64_t>() <= max;
  if (!in_range) {
    return FieldError(field, absl::StrCat("= ", Shown(json), " is outside [", min, ", ", max, "]"));
  }
  return json.get<int64_t>();
}

absl::StatusOr<int64_t> GetInt(const Json& root, absl::string_view field, int64_t min, int64_t max) {
  MF_ASSIGN_OR_RETURN(const Json* value, GetField(root, field));
  return CheckedInt(*value, field, min, max);
}

absl::StatusOr<double> GetPositiveFinite(const Json& root, absl::string_view field) {
  MF_ASSIGN_OR_RETURN(const Json* value, GetField(root, field));
  const Json& json = *value;
  if (!json.is_number()) {
    return FieldError(field, absl::StrCat("must be a number, got ", json.type_name(), " ", Shown(json)));
  }
  const double number = json.get<double>();
  if (!std::isfinite(number) || number <= 0) {
    return FieldError(field, absl::StrCat("= ", Shown(json), " must be finite and > 0"));
  }
  return number;
}

absl::StatusOr<std::string> GetString(const Json& root, absl::string_view field) {
  MF_ASSIGN_OR_RETURN(const Json* value, GetField(root, field));
  if (!value->is_string()) {
    return FieldError(field, absl::StrCat("must be a string, got ", value->type_name(), " ", Shown(*value)));
  }
  return value->get<std::string>();
}

absl::StatusOr<const Json*> GetArray(const Json& root, absl::string_view field) {
  MF_ASSIGN_OR_RETURN(const Json* value, GetField(root, field));
  if (!value->is_array()) {
    return FieldError(field, absl::StrCat("must be an array, got ", value->type_name()));
  }
  if (value->empty() || value->size() > kMaxGranularities) {
    return FieldError(field,
                      absl::StrCat("has ", value->size(), " entries, expected 1..", kMaxGranularities));
  }
  return value;
}

absl::Status ParseGranularities(const Json& root, ModelConfig& config) {
  MF_ASSIGN_OR_RETURN(const Json* array, GetArray(root, "granularities"));
  for (size_t i = 0; i < array->size(); ++i) {
    const std::string field = absl::StrCat("granularities[", i, "]");
    MF_ASSIGN_OR_RETURN(const int64_t width,
                        CheckedInt((*array)[i], field, 1, std::numeric_limits<int64_t>::max()));
    if (width > config.intermediate_size) {
      return FieldError(field,
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

absl::Status ParseGranularityNames(const Json& root, ModelConfig& config) {
  MF_ASSIGN_OR_RETURN(const Json* array, GetArray(root, "granularity_names"));
  if (array->size() != config.granularities.size()) {
    return FieldError("granularity_names", absl::StrCat("has ", array->size(), " entries, granularities has ",
                                                        config.granularities.size()));
  }
  absl::flat_hash_set<std::string> seen;
  for (size_t i = 0; i < array->size(); ++i) {
    const Json& entry = (*array)[i];
    const std::string field = absl::StrCat("granularity_names[", i, "]");
    if (!entry.is_string()) {
      return FieldError(field, absl::StrCat("must be a string, got ", entry.type_name(), " ", Shown(entry)));
    }
    const std::string name = entry.get<std::string>();
    if (name.empty() || name.size() > kMaxGranularityNameLength) {
      return FieldError(field, absl::StrCat("must have 1..", kMaxGranularityNameLength, " characters"));
    }
    for (unsigned char c : name) {
      if (c == '-' || absl::ascii_isspace(c) || absl::ascii_iscntrl(c)) {
        return FieldError(
            field, absl::StrCat("= \"", name, "\" must not contain '-', whitespace or control characters"));
      }
    }
    if (name == kSkipToken) {
      return FieldError(field, "must not be \"skip\" (reserved for skipped layers)");
    }
    // Submodel names accept widths in neurons as well as names, so an all-digit
    // name is only unambiguous when it is its own width.
    const bool all_digits = std::all_of(name.begin(), name.end(), absl::ascii_isdigit);
    if (all_digits && name != absl::StrCat(config.granularities[i])) {
      return FieldError(
          field, absl::StrCat("= \"", name, "\" is a number other than its width ", config.granularities[i]));
    }
    if (!seen.insert(name).second) {
      return FieldError(field, absl::StrCat("= \"", name, "\" is a duplicate"));
    }
    config.granularity_names.push_back(name);
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseRoot(const Json& root) {
  ModelConfig config;

  MF_ASSIGN_OR_RETURN(const std::string model_type, GetString(root, "model_type"));
  if (model_type != kModelType) {
    return FieldError("model_type",
                      absl::StrCat("= ", Shown(Json(model_type)), ", expected \"", kModelType, "\""));
  }

  MF_ASSIGN_OR_RETURN(config.vocab_size, GetInt(root, "vocab_size", 1, kMaxVocab));
  MF_ASSIGN_OR_RETURN(config.hidden_size, GetInt(root, "hidden_size", 2, kMaxHidden));
  if (config.hidden_size % 2 != 0) {
    return FieldError("hidden_size", absl::StrCat("= ", config.hidden_size, " must be even"));
  }
  MF_ASSIGN_OR_RETURN(config.intermediate_size, GetInt(root, "intermediate_size", 1, kMaxIntermediate));
  MF_ASSIGN_OR_RETURN(config.num_layers, GetInt(root, "num_hidden_layers", 1, kMaxLayers));
  MF_ASSIGN_OR_RETURN(config.num_heads, GetInt(root, "num_attention_heads", 1, kMaxHeads));
  MF_ASSIGN_OR_RETURN(config.num_kv_heads, GetInt(root, "num_key_value_heads", 1, config.num_heads));
  if (config.num_heads % config.num_kv_heads != 0) {
    return FieldError(
        "num_key_value_heads",
        absl::StrCat("= ", config.num_kv_heads, " must divide num_attention_heads ", config.num_heads));
  }
  MF_ASSIGN_OR_RETURN(config.head_dim, GetInt(root, "head_dim", 2, kMaxHeadDim));
  if (config.head_dim % 2 != 0) {
    return FieldError("head_dim", absl::StrCat("= ", config.head_dim, " must be even (RoPE rotates pairs)"));
  }
  MF_ASSIGN_OR_RETURN(config.ple_dim, GetInt(root, "hidden_size_per_layer_input", 1, kMaxPleDim));
  MF_ASSIGN_OR_RETURN(config.max_position_embeddings,
                      GetInt(root, "max_position_embeddings", 1, kMaxPositions));

  MF_RETURN_IF_ERROR(ParseGranularities(root, config));
  MF_RETURN_IF_ERROR(ParseGranularityNames(root, config));

  MF_ASSIGN_OR_RETURN(config.rope_theta, GetPositiveFinite(root, "rope_theta"));
  MF_ASSIGN_OR_RETURN(config.rms_norm_eps, GetPositiveFinite(root, "rms_norm_eps"));

  MF_ASSIGN_OR_RETURN(const std::string activation, GetString(root, "hidden_activation"));
  if (activation == "gelu_pytorch_tanh") {
    config.activation = Activation::kGeluTanh;
  } else if (activation == "silu") {
    config.activation = Activation::kSilu;
  } else {
    return FieldError("hidden_activation", absl::StrCat("= ", Shown(Json(activation)),
                                                        ", expected \"gelu_pytorch_tanh\" or \"silu\""));
  }

  MF_ASSIGN_OR_RETURN(const Json* tie, GetField(root, "tie_word_embeddings"));
  if (!tie->is_boolean()) {
    return FieldError("tie_word_embeddings",
                      absl::StrCat("must be a boolean, got ", tie->type_name(), " ", Shown(*tie)));
  }
  if (!tie->get<bool>()) {
    return FieldError("tie_word_embeddings", "must be true (the LM head is embed_tokens)");
  }

  MF_ASSIGN_OR_RETURN(const std::string dtype, GetString(root, "torch_dtype"));
  if (dtype == "float32") {
    config.dtype = DType::kF32;
  } else if (dtype == "bfloat16") {
    config.dtype = DType::kBF16;
  } else {
    return FieldError("torch_dtype",
                      absl::StrCat("= ", Shown(Json(dtype)), ", expected \"float32\" or \"bfloat16\""));
  }

  MF_ASSIGN_OR_RETURN(config.bos_token_id, GetInt(root, "bos_token_id", 0, config.vocab_size - 1));
  MF_ASSIGN_OR_RETURN(config.eos_token_id, GetInt(root, "eos_token_id", 0, config.vocab_size - 1));
  MF_ASSIGN_OR_RETURN(config.pad_token_id, GetInt(root, "pad_token_id", 0, config.vocab_size - 1));
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
