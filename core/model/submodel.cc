#include "core/model/submodel.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace matformer {
namespace {

constexpr absl::string_view kSkipToken = "skip";

uint64_t Fnv1a64(absl::string_view text) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

std::string GranularityToken(const ModelConfig& config, int64_t width) {
  int index = config.GranularityIndex(width);
  if (index >= 0 && index < static_cast<int>(config.granularity_names.size())) {
    return config.granularity_names[index];
  }
  return absl::StrCat(width);
}

absl::StatusOr<int64_t> ParseGranularity(const ModelConfig& config, absl::string_view token) {
  for (size_t i = 0; i < config.granularity_names.size(); ++i) {
    if (config.granularity_names[i] == token) return config.granularities[i];
  }
  int64_t width = 0;
  if (absl::SimpleAtoi(token, &width) && config.GranularityIndex(width) >= 0) return width;
  return absl::InvalidArgumentError(absl::StrCat(
      "spec: unknown granularity '", token, "' (expected one of ",
      absl::StrJoin(config.granularity_names, ", "), " or a width in ",
      absl::StrJoin(config.granularities, ", "), ")"));
}

}  // namespace

int64_t LayerActiveParams(const ModelConfig& c, int64_t width) {
  if (width == 0) return 0;
  const int64_t d = c.hidden_size;
  const int64_t attention = d * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads);
  const int64_t ffn = 3 * d * width;
  const int64_t ple_injection = 2 * d * c.ple_dim;
  const int64_t norms = 3 * d;
  return attention + ffn + ple_injection + norms;
}

absl::StatusOr<SubmodelSpec> SubmodelSpec::Create(const ModelConfig& config,
                                                  std::vector<int64_t> ffn_widths,
                                                  const std::vector<int>& skipped_layers) {
  const int layers = config.num_layers;
  if (static_cast<int>(ffn_widths.size()) != layers) {
    return absl::InvalidArgumentError(absl::StrCat("spec: ", ffn_widths.size(),
                                                   " layer widths given, the model has ", layers,
                                                   " layers"));
  }
  for (int l = 0; l < layers; ++l) {
    if (config.GranularityIndex(ffn_widths[l]) < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec: layer ", l, " width ", ffn_widths[l],
                       " is not a granularity of the model (", absl::StrJoin(config.granularities, ", "),
                       ")"));
    }
  }
  SubmodelSpec spec;
  spec.skipped_.assign(layers, false);
  for (int layer : skipped_layers) {
    if (layer < 0 || layer >= layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec: skipped layer ", layer, " out of range [0, ", layers, ")"));
    }
    if (spec.skipped_[layer]) {
      return absl::InvalidArgumentError(absl::StrCat("spec: layer ", layer, " skipped twice"));
    }
    spec.skipped_[layer] = true;
  }
  if (static_cast<int>(skipped_layers.size()) == layers) {
    return absl::InvalidArgumentError("spec: every layer is skipped; at least one must run");
  }
  spec.ffn_widths_ = std::move(ffn_widths);

  std::vector<std::string> tokens;
  bool uniform = skipped_layers.empty();
  for (int l = 0; l < layers; ++l) {
    tokens.push_back(spec.skipped_[l] ? std::string(kSkipToken)
                                      : GranularityToken(config, spec.ffn_widths_[l]));
    uniform = uniform && spec.ffn_widths_[l] == spec.ffn_widths_[0];
  }
  spec.name_ = uniform ? tokens[0] : absl::StrJoin(tokens, "-");
  spec.hash_ = Fnv1a64(spec.name_);

  if (config.active_params) {
    std::vector<int64_t> widths(layers);
    for (int l = 0; l < layers; ++l) widths[l] = spec.ffn_width(l);
    spec.active_params_ = config.active_params(widths);
    return spec;
  }
  const int64_t d = config.hidden_size;
  int64_t params = config.num_layers * config.ple_dim * d + config.ple_dim  // PLE projection + norm
                   + d + config.vocab_size * d;                            // final norm + LM head
  for (int l = 0; l < layers; ++l) params += LayerActiveParams(config, spec.ffn_width(l));
  spec.active_params_ = params;
  return spec;
}

absl::StatusOr<SubmodelSpec> SubmodelSpec::Uniform(const ModelConfig& config,
                                                   absl::string_view granularity) {
  absl::StatusOr<int64_t> width = ParseGranularity(config, granularity);
  if (!width.ok()) return width.status();
  return Create(config, std::vector<int64_t>(config.num_layers, *width), {});
}

absl::StatusOr<SubmodelSpec> SubmodelSpec::Parse(const ModelConfig& config, absl::string_view text) {
  if (text.empty()) return absl::InvalidArgumentError("spec: empty name");
  if (text.size() > 16 * 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec: name of ", text.size(), " bytes exceeds 16384"));
  }
  std::vector<absl::string_view> tokens = absl::StrSplit(text, absl::ByAnyChar("-,"));
  if (tokens.size() == 1) return Uniform(config, tokens[0]);
  if (static_cast<int>(tokens.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("spec: '", text, "' names ", tokens.size(),
                                                   " layers, the model has ", config.num_layers));
  }
  std::vector<int64_t> widths;
  std::vector<int> skipped;
  for (int l = 0; l < config.num_layers; ++l) {
    if (tokens[l] == kSkipToken) {
      skipped.push_back(l);
      // A skipped layer keeps a nominal width so that the widths vector stays valid.
      widths.push_back(config.granularities.back());
      continue;
    }
    absl::StatusOr<int64_t> width = ParseGranularity(config, tokens[l]);
    if (!width.ok()) return width.status();
    widths.push_back(*width);
  }
  return Create(config, std::move(widths), skipped);
}

SubmodelSpec SubmodelSpec::Full(const ModelConfig& config) {
  return *Create(config, std::vector<int64_t>(config.num_layers, config.granularities.back()), {});
}

std::vector<int> SubmodelSpec::SkippedLayers() const {
  std::vector<int> layers;
  for (int l = 0; l < num_layers(); ++l) {
    if (skipped_[l]) layers.push_back(l);
  }
  return layers;
}

bool SubmodelSpec::NonDecreasing() const {
  int64_t previous = 0;
  for (int l = 0; l < num_layers(); ++l) {
    if (skipped_[l]) continue;
    if (ffn_widths_[l] < previous) return false;
    previous = ffn_widths_[l];
  }
  return true;
}

}  // namespace matformer
