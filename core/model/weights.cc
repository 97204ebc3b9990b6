#include "core/model/weights.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/status_macros.h"

namespace matformer {
namespace {

// Checks every expected tensor's presence, shape and dtype, and that there is
// no other tensor, before anything is packed.
absl::Status ValidateTensors(const ModelConfig& config, const SafetensorsFile& file) {
  absl::flat_hash_set<std::string> expected;
  for (const ExpectedTensor& want : ExpectedTensors(config)) {
    expected.insert(want.name);
    absl::StatusOr<TensorView> tensor = file.Get(want.name);
    if (!tensor.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("model.safetensors: missing tensor '", want.name, "'"));
    }
    if (tensor->shape != want.shape) {
      return absl::InvalidArgumentError(absl::StrCat("model.safetensors: tensor '", want.name, "' has shape [",
                                                     absl::StrJoin(tensor->shape, ", "), "], expected [",
                                                     absl::StrJoin(want.shape, ", "), "] from config.json"));
    }
    if (tensor->dtype != config.dtype) {
      return absl::InvalidArgumentError(absl::StrCat("model.safetensors: tensor '", want.name, "' has dtype ",
                                                     DTypeName(tensor->dtype), ", config.json says ",
                                                     DTypeName(config.dtype)));
    }
  }
  std::vector<std::string> extra;
  for (const std::string& name : file.Names()) {
    if (!expected.contains(name)) extra.push_back(name);
  }
  if (extra.empty()) return absl::OkStatus();
  std::sort(extra.begin(), extra.end());
  if (extra.size() > 5) extra.resize(5);
  return absl::InvalidArgumentError(absl::StrCat(
      "model.safetensors: unexpected tensor(s) not used by a matformer_ple model: ", absl::StrJoin(extra, ", ")));
}

// Reads the (already validated) tensors of one model into packed form.
class TensorReader {
 public:
  TensorReader(const ModelConfig& config, const SafetensorsFile& file) : config_(config), file_(file) {}

  TensorView View(const std::string& name) const { return *file_.Get(name); }

  std::vector<float> Vector(const std::string& name) const {
    const TensorView tensor = View(name);
    std::vector<float> values(tensor.num_elements());
    tensor.RowToF32(0, values.data());
    return values;
  }

  absl::StatusOr<PackedMatrix> Matrix(const std::string& name) const { return PackedMatrix::PackAll(View(name)); }

  // The nested FFN slabs of `name`: split by rows (gate/up) or columns (down).
  absl::StatusOr<std::vector<PackedMatrix>> Slabs(const std::string& name, bool split_rows) const {
    return PackedMatrix::PackSlabs(View(name), config_.granularities, split_rows);
  }

 private:
  const ModelConfig& config_;
  const SafetensorsFile& file_;
};

absl::StatusOr<LayerWeights> LoadLayer(const TensorReader& reader, int layer) {
  const std::string prefix = absl::StrCat("model.layers.", layer, ".");
  LayerWeights w;
  w.input_norm = reader.Vector(prefix + "input_layernorm.weight");
  w.post_attention_norm = reader.Vector(prefix + "post_attention_layernorm.weight");
  w.post_ple_norm = reader.Vector(prefix + "post_per_layer_input_norm.weight");
  MF_ASSIGN_OR_RETURN(w.q, reader.Matrix(prefix + "self_attn.q_proj.weight"));
  MF_ASSIGN_OR_RETURN(w.k, reader.Matrix(prefix + "self_attn.k_proj.weight"));
  MF_ASSIGN_OR_RETURN(w.v, reader.Matrix(prefix + "self_attn.v_proj.weight"));
  MF_ASSIGN_OR_RETURN(w.o, reader.Matrix(prefix + "self_attn.o_proj.weight"));
  MF_ASSIGN_OR_RETURN(w.gate, reader.Slabs(prefix + "mlp.gate_proj.weight", /*split_rows=*/true));
  MF_ASSIGN_OR_RETURN(w.up, reader.Slabs(prefix + "mlp.up_proj.weight", /*split_rows=*/true));
  MF_ASSIGN_OR_RETURN(w.down, reader.Slabs(prefix + "mlp.down_proj.weight", /*split_rows=*/false));
  MF_ASSIGN_OR_RETURN(w.ple_gate, reader.Matrix(prefix + "per_layer_input_gate.weight"));
  MF_ASSIGN_OR_RETURN(w.ple_projection, reader.Matrix(prefix + "per_layer_projection.weight"));
  return w;
}

}  // namespace

std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& c) {
  const int64_t d = c.hidden_size;
  const int64_t q_width = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_width = int64_t{c.num_kv_heads} * c.head_dim;
  const int64_t ple_width = int64_t{c.num_layers} * c.ple_dim;
  std::vector<ExpectedTensor> tensors = {
      {"model.embed_tokens.weight", {c.vocab_size, d}, false},
      {"model.embed_tokens_per_layer.weight", {c.vocab_size, ple_width}, false},
      {"model.per_layer_model_projection.weight", {ple_width, d}, false},
      {"model.per_layer_projection_norm.weight", {c.ple_dim}, true},
  };
  for (int layer = 0; layer < c.num_layers; ++layer) {
    const std::string prefix = absl::StrCat("model.layers.", layer, ".");
    const ExpectedTensor layer_tensors[] = {
        {"input_layernorm.weight", {d}, true},
        {"self_attn.q_proj.weight", {q_width, d}, false},
        {"self_attn.k_proj.weight", {kv_width, d}, false},
        {"self_attn.v_proj.weight", {kv_width, d}, false},
        {"self_attn.o_proj.weight", {d, q_width}, false},
        {"post_attention_layernorm.weight", {d}, true},
        {"mlp.gate_proj.weight", {c.intermediate_size, d}, false},
        {"mlp.up_proj.weight", {c.intermediate_size, d}, false},
        {"mlp.down_proj.weight", {d, c.intermediate_size}, false},
        {"per_layer_input_gate.weight", {c.ple_dim, d}, false},
        {"per_layer_projection.weight", {d, c.ple_dim}, false},
        {"post_per_layer_input_norm.weight", {d}, true},
    };
    for (const ExpectedTensor& tensor : layer_tensors) {
      tensors.push_back({prefix + tensor.name, tensor.shape, tensor.is_norm});
    }
  }
  tensors.push_back({"model.norm.weight", {d}, true});
  return tensors;
}

absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& c, const SafetensorsFile& file) {
  MF_RETURN_IF_ERROR(ValidateTensors(c, file));
  const TensorReader reader(c, file);
  ModelWeights w;
  w.embed = reader.View("model.embed_tokens.weight");
  w.ple_table = reader.View("model.embed_tokens_per_layer.weight");
  // Looked up a row per token (the PLE table stays mapped, never resident whole).
  AdviseRandomRows(w.ple_table);
  MF_ASSIGN_OR_RETURN(w.ple_model_projection, reader.Matrix("model.per_layer_model_projection.weight"));
  w.ple_projection_norm = reader.Vector("model.per_layer_projection_norm.weight");
  w.final_norm = reader.Vector("model.norm.weight");
  MF_ASSIGN_OR_RETURN(w.lm_head, PackedMatrix::PackAll(w.embed));
  AdviseRandomRows(w.embed);  // after the packing, which reads it all
  for (int layer = 0; layer < c.num_layers; ++layer) {
    MF_ASSIGN_OR_RETURN(LayerWeights layer_weights, LoadLayer(reader, layer));
    w.layers.push_back(std::move(layer_weights));
  }
  return w;
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& directory) {
  std::unique_ptr<Model> model(new Model());
  model->directory_ = directory;
  MF_ASSIGN_OR_RETURN(model->config_, LoadModelConfig(directory + "/config.json"));
  MF_ASSIGN_OR_RETURN(model->file_, SafetensorsFile::Open(directory + "/model.safetensors"));
  MF_ASSIGN_OR_RETURN(model->tokenizer_,
                   Tokenizer::Load(directory + "/tokenizer.model", model->config_.vocab_size));
  MF_ASSIGN_OR_RETURN(model->weights_, LoadWeights(model->config_, *model->file_));
  const ModelWeights& w = model->weights_;
  size_t bytes = w.ple_model_projection.bytes() + w.lm_head.bytes();
  for (const LayerWeights& layer : w.layers) {
    bytes += layer.q.bytes() + layer.k.bytes() + layer.v.bytes() + layer.o.bytes() + layer.ple_gate.bytes() +
             layer.ple_projection.bytes();
    for (const auto* slabs : {&layer.gate, &layer.up, &layer.down}) {
      for (const PackedMatrix& slab : *slabs) bytes += slab.bytes();
    }
  }
  model->packed_bytes_ = bytes;
  return model;
}

}  // namespace matformer
