#include "core/gemma3n/serving.h"

#include <algorithm>
#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/gemma3n/chat.h"
#include "core/util/files.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace matformer::gemma3n {
namespace {

using Json = nlohmann::json;

// generation_config.json, config.json, a slicing table: all small.
constexpr size_t kMaxTextFileBytes = 4 << 20;

absl::StatusOr<std::string> ReadText(const std::string& path) {
  return ReadBoundedFile(path, kMaxTextFileBytes, absl::StrCat(path, ": "));
}

absl::StatusOr<Json> ReadJson(const std::string& path) {
  MF_ASSIGN_OR_RETURN(std::string text, ReadText(path));
  Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  return json;
}

// A generation_config.json's eos_token_id: one id or a list (the published
// instruction-tuned checkpoints add <end_of_turn> there).
absl::Status AddGenerationEos(const std::string& model_dir, const Config& config, absl::flat_hash_set<int32_t>& eos) {
  const std::string path = model_dir + "/generation_config.json";
  if (!std::filesystem::exists(path)) return absl::OkStatus();
  MF_ASSIGN_OR_RETURN(Json json, ReadJson(path));
  if (!json.contains("eos_token_id")) return absl::OkStatus();
  const Json& field = json["eos_token_id"];
  std::vector<Json> ids = field.is_array() ? std::vector<Json>(field.begin(), field.end()) : std::vector<Json>{field};
  for (const Json& id : ids) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": eos_token_id must be ids in [0, ", config.vocab_size, "), got ", field.dump()));
    }
    eos.insert(id.get<int32_t>());
  }
  return absl::OkStatus();
}

// The sequence state this engine adds: the slice and the K/V view over the
// sequence's own blocks (the ones the scheduler reserved).
struct SlicedSequence : Sequence {
  SlicedSequence(const SubmodelSpec& spec, KvPool* pool, absl::StatusOr<Slice> slice)
      : Sequence(spec, pool), slice(std::move(slice)), cache(&kv) {}
  absl::StatusOr<Slice> slice;
  KvCache cache;
};

}  // namespace

absl::StatusOr<bool> IsGemma3nDirectory(const std::string& model_dir) {
  MF_ASSIGN_OR_RETURN(Json json, ReadJson(model_dir + "/config.json"));
  const std::string type = json.value("model_type", std::string());
  return type == "gemma3n" || type == "gemma3n_text";
}

absl::StatusOr<ModelConfig> ServingConfig(const Config& config, int64_t ffn_granule) {
  const int64_t ff = config.intermediate_size.front();
  for (size_t l = 0; l < config.intermediate_size.size(); ++l) {
    if (config.intermediate_size[l] != ff) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: intermediate_size differs between layers (layer ", l,
                                                     ": ", config.intermediate_size[l], ", layer 0: ", ff,
                                                     "); serving needs one FFN width for every layer"));
    }
  }
  if (ffn_granule < 1) return absl::InvalidArgumentError(absl::StrCat("ffn_granule = ", ffn_granule, " must be >= 1"));
  ModelConfig serving;
  for (int64_t width = ffn_granule; width < ff; width += ffn_granule) serving.granularities.push_back(width);
  serving.granularities.push_back(ff);
  for (int64_t width : serving.granularities) serving.granularity_names.push_back(absl::StrCat(width));
  serving.vocab_size = config.vocab_size;
  serving.hidden_size = config.hidden_size;
  serving.intermediate_size = ff;
  serving.num_layers = config.num_layers;
  serving.num_heads = config.num_heads;
  serving.num_kv_heads = config.num_kv_heads;
  serving.head_dim = config.head_dim;
  serving.ple_dim = config.hidden_size_per_layer_input;
  serving.rope_theta = config.rope_theta_full;
  serving.rms_norm_eps = config.rms_norm_eps;
  serving.max_position_embeddings = config.max_position_embeddings;
  serving.activation = config.activation;
  serving.bos_token_id = config.bos_token_id;
  serving.eos_token_id = config.eos_token_ids.empty() ? 1 : config.eos_token_ids.front();
  serving.pad_token_id = config.pad_token_id;
  serving.active_params = [config](const std::vector<int64_t>& layer_widths) {
    Slice slice;
    slice.ffn_width = layer_widths;
    for (int64_t width : layer_widths) slice.skipped.push_back(width == 0);
    // A spec that skips a K/V source is refused by ValidateSpec; count it as if its sources were kept.
    absl::StatusOr<std::vector<int>> sources = KvSourceLayers(config, slice.skipped);
    slice.kv_source = sources.ok() ? *sources : *KvSourceLayers(config, {});
    return slice.ActiveParams(config);
  };
  return serving;
}

absl::StatusOr<Slice> SpecToSlice(const Config& config, int64_t ffn_granule, const SubmodelSpec& spec) {
  if (spec.num_layers() != config.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec: ", spec.num_layers(), " layers, the model has ", config.num_layers));
  }
  std::vector<int64_t> kept_widths;
  for (int l = 0; l < spec.num_layers(); ++l) {
    if (!spec.skipped(l)) kept_widths.push_back(spec.ffn_width(l));
  }
  absl::StatusOr<Slice> slice = Slice::Create(config, ffn_granule, kept_widths, spec.SkippedLayers(), spec.name());
  if (!slice.ok())
    return absl::InvalidArgumentError(absl::StrCat("spec '", spec.name(), "': ", slice.status().message()));
  return slice;
}

absl::StatusOr<std::vector<Candidate>> CandidatesFromSlicingTable(const Config& config, int64_t ffn_granule,
                                                                  const ModelConfig& serving,
                                                                  const std::string& csv_path) {
  MF_ASSIGN_OR_RETURN(std::string text, ReadText(csv_path));
  absl::StatusOr<std::vector<PublishedSlice>> rows = ParseSlicingTable(text);
  if (!rows.ok()) return absl::InvalidArgumentError(absl::StrCat(csv_path, ": ", rows.status().message()));
  std::vector<Candidate> candidates;
  for (const PublishedSlice& row : *rows) {
    const std::string where = absl::StrCat(csv_path, ": row '", row.name, "': ");
    std::vector<bool> skipped(config.num_layers, false);
    for (int layer : row.skipped_layers) {
      if (layer < 0 || layer >= config.num_layers) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, "skipped layer ", layer, " outside [0, ", config.num_layers, ")"));
      }
      skipped[layer] = true;
    }
    const int kept = config.num_layers - static_cast<int>(row.skipped_layers.size());
    if (static_cast<int>(row.ffn_widths.size()) != kept) {
      return absl::InvalidArgumentError(absl::StrCat(where, row.ffn_widths.size(), " FFN widths for ", kept,
                                                     " kept layers of a ", config.num_layers, "-layer model"));
    }
    // Skipped layers carry the full width: SubmodelSpec ignores it.
    std::vector<int64_t> widths(config.num_layers, serving.intermediate_size);
    for (int l = 0, k = 0; l < config.num_layers; ++l) {
      if (!skipped[l]) widths[l] = row.ffn_widths[k++];
    }
    absl::StatusOr<SubmodelSpec> spec = SubmodelSpec::Create(serving, widths, row.skipped_layers);
    if (!spec.ok()) return absl::InvalidArgumentError(absl::StrCat(where, spec.status().message()));
    absl::StatusOr<Slice> slice = SpecToSlice(config, ffn_granule, *spec);
    if (!slice.ok()) return absl::InvalidArgumentError(absl::StrCat(where, slice.status().message()));
    candidates.push_back(
        {.spec = *std::move(spec), .expected_loss = 1.0 - row.mmlu, .measured = true, .label = row.name});
  }
  if (candidates.empty()) return absl::InvalidArgumentError(absl::StrCat(csv_path, ": no rows"));
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& a, const Candidate& b) {
                     // Equal quality: the cheaper slice first.
                     if (a.expected_loss != b.expected_loss) return a.expected_loss < b.expected_loss;
                     return a.spec.active_params() < b.spec.active_params();
                   });
  return candidates;
}

absl::StatusOr<std::unique_ptr<ServingModel>> ServingModel::Create(std::shared_ptr<const Model> model,
                                                                   const EngineOptions& options) {
  if (model->tokenizer() == nullptr) {
    return absl::InvalidArgumentError("the checkpoint has no tokenizer.model; the server needs one");
  }
  MF_RETURN_IF_ERROR(CheckKvPoolOptions(options.kv_blocks, options.kv_block_tokens));
  std::unique_ptr<ServingModel> serving(new ServingModel());
  const Config& c = model->config();
  MF_ASSIGN_OR_RETURN(serving->serving_config_, ServingConfig(c, model->ffn_granule()));
  serving->serving_config_.dtype = model->weights().embed.dtype;
  serving->eos_.insert(c.eos_token_ids.begin(), c.eos_token_ids.end());
  MF_RETURN_IF_ERROR(AddGenerationEos(model->directory(), c, serving->eos_));
  // The chat template ends every turn with <end_of_turn>: a model turn ends there too.
  if (absl::StatusOr<std::vector<int>> end_of_turn = model->tokenizer()->Encode("<end_of_turn>");
      end_of_turn.ok() && end_of_turn->size() == 1) {
    serving->eos_.insert(end_of_turn->front());
  }
  serving->kv_pool_ = model->NewKvPool(options.kv_blocks, options.kv_block_tokens,
                                       options.kv_dtype.value_or(KvDtypeOf(serving->serving_config_.dtype)));
  serving->ple_cache_ =
      std::make_unique<PleCache>(int64_t{c.num_layers} * c.hidden_size_per_layer_input, options.ple_cache_bytes);
  serving->model_ = std::move(model);
  return serving;
}

absl::Status ServingModel::ValidateSpec(const SubmodelSpec& spec) const {
  return SpecToSlice(model_->config(), model_->ffn_granule(), spec).status();
}

std::unique_ptr<Sequence> ServingModel::NewSequence(const SubmodelSpec& spec) {
  return std::make_unique<SlicedSequence>(spec, kv_pool_.get(),
                                          SpecToSlice(model_->config(), model_->ffn_granule(), spec));
}

absl::StatusOr<std::vector<float>> ServingModel::Step(absl::Span<const matformer::StepInput> inputs) {
  std::vector<gemma3n::StepInput> sliced;
  sliced.reserve(inputs.size());
  for (const matformer::StepInput& input : inputs) {
    auto* sequence = dynamic_cast<SlicedSequence*>(input.sequence);
    if (sequence == nullptr) return absl::InvalidArgumentError("step: a sequence not made by this engine");
    if (!sequence->slice.ok()) return sequence->slice.status();
    sliced.push_back({.slice = &*sequence->slice,
                      .cache = &sequence->cache,
                      .tokens = input.tokens,
                      .all_logits = input.all_logits});
  }
  return model_->Step(sliced, {.ple_cache = ple_cache_.get()});
}

bool ServingModel::IsEndOfSequence(int32_t token) const { return eos_.contains(token); }

absl::StatusOr<std::string> ServingModel::FormatChat(
    const std::vector<std::pair<std::string, std::string>>& messages) const {
  std::vector<ChatMessage> chat;
  for (const auto& [role, content] : messages) chat.push_back({role, content});
  absl::StatusOr<std::string> text = gemma3n::FormatChat(chat, /*add_generation_prompt=*/true);
  if (!text.ok()) return absl::InvalidArgumentError(absl::StrCat("messages: ", text.status().message()));
  return text;
}

}  // namespace matformer::gemma3n
