#include "core/gemma3n/weights.h"

#include <algorithm>
#include <cstdint>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/files.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace matformer::gemma3n {
namespace {

using Json = nlohmann::json;

constexpr absl::string_view kMultimodalPrefix = "model.language_model.";
constexpr absl::string_view kTextPrefix = "model.";
constexpr int64_t kMaxIndexBytes = 64 << 20;

// The language-model prefix used by a set of tensor names. Text tensors of a
// multimodal checkpoint are under model.language_model.; a text-only model
// saved without the conversion mapping uses model.embed_tokens directly.
absl::StatusOr<std::string> FindPrefix(const std::vector<std::string>& names, const std::string& where) {
  for (const std::string& name : names) {
    if (absl::StartsWith(name, kMultimodalPrefix)) return std::string(kMultimodalPrefix);
  }
  for (const std::string& name : names) {
    if (name == absl::StrCat(kTextPrefix, "embed_tokens.weight")) return std::string(kTextPrefix);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      where, ": no Gemma 3n language-model tensors (expected names under '", kMultimodalPrefix, "')"));
}

std::string ShapeText(const std::vector<int64_t>& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

// Reads validated tensors into the forms the forward pass uses.
class Reader {
 public:
  explicit Reader(const Checkpoint& checkpoint) : checkpoint_(checkpoint) {}

  TensorView View(const std::string& name) const { return *checkpoint_.Get(name); }

  std::vector<float> Floats(const std::string& name) const {
    const TensorView tensor = View(name);
    std::vector<float> values(tensor.num_elements());
    // A 2-D tensor's rows are contiguous, so row 0 of a [rows * cols] view covers it all.
    TensorView flat = tensor;
    flat.shape = {tensor.num_elements()};
    flat.RowToF32(0, values.data());
    return values;
  }

  absl::StatusOr<PackedMatrix> Matrix(const std::string& name) const {
    const TensorView tensor = View(name);
    absl::StatusOr<PackedMatrix> packed = PackedMatrix::PackAll(tensor);
    ReleasePages(tensor);
    return packed;
  }

  // Nested FFN slabs ending at `ends`: rows of gate/up, columns of down.
  absl::StatusOr<std::vector<PackedMatrix>> Slabs(const std::string& name, const std::vector<int64_t>& ends,
                                                  bool split_rows) const {
    const TensorView tensor = View(name);
    absl::StatusOr<std::vector<PackedMatrix>> slabs = PackedMatrix::PackSlabs(tensor, ends, split_rows);
    ReleasePages(tensor);
    return slabs;
  }

 private:
  const Checkpoint& checkpoint_;
};

}  // namespace

absl::Status ValidateCheckpoint(const Config& config, const Checkpoint& checkpoint) {
  absl::flat_hash_set<std::string> known;
  for (const ExpectedTensor& want : ExpectedTensors(config)) {
    known.insert(want.name);
    const std::string full = absl::StrCat(checkpoint.prefix(), want.name);
    if (!checkpoint.Contains(want.name)) {
      if (!want.required) continue;
      return absl::InvalidArgumentError(absl::StrCat("checkpoint: missing tensor '", full, "'"));
    }
    const TensorView tensor = *checkpoint.Get(want.name);
    if (tensor.shape != want.shape) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint: tensor '", full, "' has shape ",
                                                     ShapeText(tensor.shape), ", expected ", ShapeText(want.shape),
                                                     " from config.json"));
    }
  }
  for (const std::string& name : checkpoint.Names()) {
    // A tensor the forward pass does not know would be a computation silently left out.
    if (!known.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint: unexpected tensor '", checkpoint.prefix(), name,
                                                     "' (not part of a Gemma 3n text model of this config)"));
    }
  }
  return absl::OkStatus();
}

namespace {

absl::StatusOr<LayerWeights> LoadLayer(const Config& c, const Reader& reader, int layer, bool owns_kv,
                                       int64_t granule) {
  const std::string p = absl::StrCat("layers.", layer, ".");
  LayerWeights w;
  w.router_norm = reader.Floats(p + "altup.router_norm.weight");
  w.modality_router = reader.Floats(p + "altup.modality_router.weight");
  w.prediction_coefs = reader.Floats(p + "altup.prediction_coefs.weight");
  w.correction_coefs = reader.Floats(p + "altup.correction_coefs.weight");
  if (c.altup_coef_clip > 0) {
    // HF clamps the correction coefficients in place before every use.
    const float clip = static_cast<float>(c.altup_coef_clip);
    for (float& coef : w.correction_coefs) coef = std::clamp(coef, -clip, clip);
  }
  w.correct_output_scale = reader.Floats(p + "altup.correct_output_scale");

  w.input_norm = reader.Floats(p + "input_layernorm.weight");
  w.q_norm = reader.Floats(p + "self_attn.q_norm.weight");
  w.post_attention_norm = reader.Floats(p + "post_attention_layernorm.weight");
  MF_ASSIGN_OR_RETURN(w.q, reader.Matrix(p + "self_attn.q_proj.weight"));
  MF_ASSIGN_OR_RETURN(w.o, reader.Matrix(p + "self_attn.o_proj.weight"));
  if (owns_kv) {
    w.k_norm = reader.Floats(p + "self_attn.k_norm.weight");
    MF_ASSIGN_OR_RETURN(w.k, reader.Matrix(p + "self_attn.k_proj.weight"));
    MF_ASSIGN_OR_RETURN(w.v, reader.Matrix(p + "self_attn.v_proj.weight"));
  }

  MF_ASSIGN_OR_RETURN(w.laurel_left, reader.Matrix(p + "laurel.linear_left.weight"));
  MF_ASSIGN_OR_RETURN(w.laurel_right, reader.Matrix(p + "laurel.linear_right.weight"));
  w.post_laurel_norm = reader.Floats(p + "laurel.post_laurel_norm.weight");

  w.pre_ffw_norm = reader.Floats(p + "pre_feedforward_layernorm.weight");
  w.post_ffw_norm = reader.Floats(p + "post_feedforward_layernorm.weight");
  const int64_t width = c.intermediate_size[layer];
  for (int64_t end = granule; end < width; end += granule) w.ffn_slab_ends.push_back(end);
  w.ffn_slab_ends.push_back(width);
  MF_ASSIGN_OR_RETURN(w.gate, reader.Slabs(p + "mlp.gate_proj.weight", w.ffn_slab_ends, /*split_rows=*/true));
  MF_ASSIGN_OR_RETURN(w.up, reader.Slabs(p + "mlp.up_proj.weight", w.ffn_slab_ends, /*split_rows=*/true));
  MF_ASSIGN_OR_RETURN(w.down, reader.Slabs(p + "mlp.down_proj.weight", w.ffn_slab_ends, /*split_rows=*/false));

  MF_ASSIGN_OR_RETURN(w.per_layer_input_gate, reader.Matrix(p + "per_layer_input_gate.weight"));
  MF_ASSIGN_OR_RETURN(w.per_layer_projection, reader.Matrix(p + "per_layer_projection.weight"));
  w.post_per_layer_input_norm = reader.Floats(p + "post_per_layer_input_norm.weight");
  return w;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& directory) {
  auto checkpoint = std::unique_ptr<Checkpoint>(new Checkpoint());
  const std::string index_path = directory + "/model.safetensors.index.json";
  std::vector<std::string> shard_names;
  // No index file: a single-file checkpoint.
  const absl::StatusOr<std::string> index_text =
      ReadBoundedFile(index_path, kMaxIndexBytes, absl::StrCat("'", index_path, "': "));
  if (!index_text.ok() && !absl::IsNotFound(index_text.status())) return index_text.status();
  if (index_text.ok()) {
    Json index;
    try {
      index = Json::parse(*index_text);
    } catch (const Json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, " is not valid JSON: ", e.what()));
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map (an object) is missing"));
    }
    std::vector<std::string> names;
    for (const auto& [name, shard] : index["weight_map"].items()) {
      if (!shard.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map['", name, "'] must be a file name"));
      }
      names.push_back(name);
    }
    MF_ASSIGN_OR_RETURN(checkpoint->prefix_, FindPrefix(names, index_path));
    for (const auto& [name, shard_json] : index["weight_map"].items()) {
      if (!absl::StartsWith(name, checkpoint->prefix_)) continue;  // vision, audio: not opened
      const std::string shard = shard_json.get<std::string>();
      // Shards live in the directory itself; a path could reach any file.
      if (shard.empty() || absl::StrContains(shard, "/") || shard == "." || shard == "..") {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": weight_map['", name, "'] = '", shard, "' is not a file name"));
      }
      if (std::find(shard_names.begin(), shard_names.end(), shard) == shard_names.end()) shard_names.push_back(shard);
    }
    std::sort(shard_names.begin(), shard_names.end());
    for (const std::string& shard : shard_names) {
      MF_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(directory + "/" + shard));
      checkpoint->files_.push_back(std::move(file));
    }
    // Every language-model tensor the index names must be in its shard.
    for (const auto& [name, shard_json] : index["weight_map"].items()) {
      if (!absl::StartsWith(name, checkpoint->prefix_)) continue;
      const std::string shard = shard_json.get<std::string>();
      const size_t i = std::find(shard_names.begin(), shard_names.end(), shard) - shard_names.begin();
      absl::StatusOr<TensorView> view = checkpoint->files_[i]->Get(name);
      if (!view.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, " puts tensor '", name, "' in '", shard, "', which does not hold it"));
      }
      checkpoint->tensors_.emplace(name.substr(checkpoint->prefix_.size()), *view);
    }
    return checkpoint;
  }

  const std::string single = directory + "/model.safetensors";
  MF_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single));
  const std::vector<std::string> names = file->Names();
  MF_ASSIGN_OR_RETURN(checkpoint->prefix_, FindPrefix(names, single));
  for (const std::string& name : names) {
    if (!absl::StartsWith(name, checkpoint->prefix_)) continue;
    checkpoint->tensors_.emplace(name.substr(checkpoint->prefix_.size()), *file->Get(name));
  }
  checkpoint->files_.push_back(std::move(file));
  return checkpoint;
}

absl::StatusOr<TensorView> Checkpoint::Get(absl::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return absl::NotFoundError(absl::StrCat("checkpoint: no tensor '", prefix_, name, "'"));
  return it->second;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, unused] : tensors_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<ExpectedTensor> ExpectedTensors(const Config& c) {
  const int64_t d = c.hidden_size, n = c.altup_num_inputs, hd = c.head_dim;
  const int64_t q_width = int64_t{c.num_heads} * hd, kv_width = int64_t{c.num_kv_heads} * hd;
  const int64_t ple_width = int64_t{c.num_layers} * c.hidden_size_per_layer_input;
  std::vector<ExpectedTensor> t = {
      {"embed_tokens.weight", {c.vocab_size, d}, true},
      {"embed_tokens_per_layer.weight", {c.vocab_size_per_layer_input, ple_width}, true},
      {"per_layer_model_projection.weight", {ple_width, d}, true},
      {"per_layer_projection_norm.weight", {c.hidden_size_per_layer_input}, true},
      {"norm.weight", {d}, true},
  };
  for (int i = 0; i + 1 < n; ++i) {
    t.push_back({absl::StrCat("altup_projections.", i, ".weight"), {d, d}, true});
    t.push_back({absl::StrCat("altup_unembed_projections.", i, ".weight"), {d, d}, true});
  }
  const std::vector<int> sources = *KvSourceLayers(c, {});
  for (int layer = 0; layer < c.num_layers; ++layer) {
    const std::string p = absl::StrCat("layers.", layer, ".");
    const bool owns_kv = sources[layer] == layer;
    const int64_t ff = c.intermediate_size[layer];
    const ExpectedTensor layer_tensors[] = {
        {"altup.correct_output_scale", {d}, true},
        {"altup.correction_coefs.weight", {n, n}, true},
        {"altup.prediction_coefs.weight", {n * n, n}, true},
        {"altup.modality_router.weight", {n, d}, true},
        {"altup.router_norm.weight", {d}, true},
        {"input_layernorm.weight", {d}, true},
        {"self_attn.q_proj.weight", {q_width, d}, true},
        {"self_attn.k_proj.weight", {kv_width, d}, owns_kv},
        {"self_attn.v_proj.weight", {kv_width, d}, owns_kv},
        {"self_attn.o_proj.weight", {d, q_width}, true},
        {"self_attn.q_norm.weight", {hd}, true},
        {"self_attn.k_norm.weight", {hd}, owns_kv},
        {"post_attention_layernorm.weight", {d}, true},
        {"laurel.linear_left.weight", {c.laurel_rank, d}, true},
        {"laurel.linear_right.weight", {d, c.laurel_rank}, true},
        {"laurel.post_laurel_norm.weight", {d}, true},
        {"pre_feedforward_layernorm.weight", {d}, true},
        {"mlp.gate_proj.weight", {ff, d}, true},
        {"mlp.up_proj.weight", {ff, d}, true},
        {"mlp.down_proj.weight", {d, ff}, true},
        {"post_feedforward_layernorm.weight", {d}, true},
        {"per_layer_input_gate.weight", {c.hidden_size_per_layer_input, d}, true},
        {"per_layer_projection.weight", {d, c.hidden_size_per_layer_input}, true},
        {"post_per_layer_input_norm.weight", {d}, true},
    };
    for (const ExpectedTensor& tensor : layer_tensors) t.push_back({p + tensor.name, tensor.shape, tensor.required});
  }
  return t;
}

absl::StatusOr<Weights> LoadWeights(const Config& c, const Checkpoint& checkpoint, const LoadOptions& options) {
  if (options.ffn_granule < 1) {
    return absl::InvalidArgumentError(absl::StrCat("ffn_granule = ", options.ffn_granule, " must be positive"));
  }
  MF_RETURN_IF_ERROR(ValidateCheckpoint(c, checkpoint));
  const Reader reader(checkpoint);
  Weights w;
  w.embed = reader.View("embed_tokens.weight");
  w.per_layer_embed = reader.View("embed_tokens_per_layer.weight");
  MF_ASSIGN_OR_RETURN(w.per_layer_model_projection, reader.Matrix("per_layer_model_projection.weight"));
  w.per_layer_projection_norm = reader.Floats("per_layer_projection_norm.weight");
  for (int i = 0; i + 1 < c.altup_num_inputs; ++i) {
    MF_ASSIGN_OR_RETURN(PackedMatrix up, reader.Matrix(absl::StrCat("altup_projections.", i, ".weight")));
    MF_ASSIGN_OR_RETURN(PackedMatrix down, reader.Matrix(absl::StrCat("altup_unembed_projections.", i, ".weight")));
    w.altup_projections.push_back(std::move(up));
    w.altup_unembed_projections.push_back(std::move(down));
  }
  w.final_norm = reader.Floats("norm.weight");
  MF_ASSIGN_OR_RETURN(w.lm_head, PackedMatrix::PackAll(w.embed));
  // Rows of both tables are looked up per token: the packing read all of the
  // embedding, which leaves; rows come back on demand, without read-ahead.
  // (Packed tensors are released as they are packed: on an E2B-shaped bf16
  // checkpoint the peak RSS was 9.5 GB without that, 4.8 GB with it.)
  ReleasePages(w.embed);
  AdviseRandomRows(w.embed);
  AdviseRandomRows(w.per_layer_embed);
  const std::vector<int> sources = *KvSourceLayers(c, {});
  for (int layer = 0; layer < c.num_layers; ++layer) {
    MF_ASSIGN_OR_RETURN(LayerWeights lw, LoadLayer(c, reader, layer, sources[layer] == layer, options.ffn_granule));
    w.layers.push_back(std::move(lw));
  }
  return w;
}

}  // namespace matformer::gemma3n
