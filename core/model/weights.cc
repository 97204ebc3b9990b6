#include "core/model/weights.h"

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/status_macros.h"

namespace matformer {
namespace {

// Collects the expected tensors while checking their shape and dtype, so that
// the unexpected ones can be reported at the end.
class TensorChecker {
 public:
  TensorChecker(const ModelConfig& config, const SafetensorsFile& file) : config_(config), file_(file) {}

  absl::StatusOr<TensorView> Get(const std::string& name, std::vector<int64_t> shape) {
    expected_.insert(name);
    absl::StatusOr<TensorView> tensor = file_.Get(name);
    if (!tensor.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("model.safetensors: missing tensor '", name, "'"));
    }
    if (tensor->shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat("model.safetensors: tensor '", name, "' has shape [",
                                                     absl::StrJoin(tensor->shape, ", "), "], expected [",
                                                     absl::StrJoin(shape, ", "), "] from config.json"));
    }
    if (tensor->dtype != config_.dtype) {
      return absl::InvalidArgumentError(absl::StrCat("model.safetensors: tensor '", name, "' has dtype ",
                                                     DTypeName(tensor->dtype), ", config.json says ",
                                                     DTypeName(config_.dtype)));
    }
    return tensor;
  }

  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int64_t size) {
    absl::StatusOr<TensorView> tensor = Get(name, {size});
    if (!tensor.ok()) return tensor.status();
    std::vector<float> values(size);
    tensor->RowToF32(0, values.data());
    return values;
  }

  absl::StatusOr<PackedMatrix> Matrix(const std::string& name, int64_t rows, int64_t cols) {
    absl::StatusOr<TensorView> tensor = Get(name, {rows, cols});
    if (!tensor.ok()) return tensor.status();
    return PackedMatrix::PackAll(*tensor);
  }

  // The nested FFN slabs of `name`: split by rows (gate/up) or columns (down).
  absl::StatusOr<std::vector<PackedMatrix>> Slabs(const std::string& name, int64_t rows, int64_t cols,
                                                  bool split_rows) {
    absl::StatusOr<TensorView> tensor = Get(name, {rows, cols});
    if (!tensor.ok()) return tensor.status();
    std::vector<PackedMatrix> slabs;
    int64_t begin = 0;
    for (int64_t end : config_.granularities) {
      absl::StatusOr<PackedMatrix> slab = split_rows ? PackedMatrix::Pack(*tensor, begin, end, 0, cols)
                                                     : PackedMatrix::Pack(*tensor, 0, rows, begin, end);
      if (!slab.ok()) return slab.status();
      slabs.push_back(*std::move(slab));
      begin = end;
    }
    return slabs;
  }

  absl::Status CheckNoExtraTensors() const {
    std::vector<std::string> extra;
    for (const std::string& name : file_.Names()) {
      if (!expected_.contains(name)) extra.push_back(name);
    }
    if (extra.empty()) return absl::OkStatus();
    std::sort(extra.begin(), extra.end());
    if (extra.size() > 5) extra.resize(5);
    return absl::InvalidArgumentError(
        absl::StrCat("model.safetensors: unexpected tensor(s) not used by a matformer_ple model: ",
                     absl::StrJoin(extra, ", ")));
  }

 private:
  const ModelConfig& config_;
  const SafetensorsFile& file_;
  absl::flat_hash_set<std::string> expected_;
};

absl::StatusOr<LayerWeights> LoadLayer(const ModelConfig& c, TensorChecker& checker, int layer) {
  const std::string prefix = absl::StrCat("model.layers.", layer, ".");
  const int64_t d = c.hidden_size, ff = c.intermediate_size;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  LayerWeights w;
  MF_ASSIGN_OR_RETURN(w.input_norm, checker.Vector(prefix + "input_layernorm.weight", d));
  MF_ASSIGN_OR_RETURN(w.post_attention_norm, checker.Vector(prefix + "post_attention_layernorm.weight", d));
  MF_ASSIGN_OR_RETURN(w.post_ple_norm, checker.Vector(prefix + "post_per_layer_input_norm.weight", d));
  MF_ASSIGN_OR_RETURN(w.q, checker.Matrix(prefix + "self_attn.q_proj.weight", q_dim, d));
  MF_ASSIGN_OR_RETURN(w.k, checker.Matrix(prefix + "self_attn.k_proj.weight", kv_dim, d));
  MF_ASSIGN_OR_RETURN(w.v, checker.Matrix(prefix + "self_attn.v_proj.weight", kv_dim, d));
  MF_ASSIGN_OR_RETURN(w.o, checker.Matrix(prefix + "self_attn.o_proj.weight", d, q_dim));
  MF_ASSIGN_OR_RETURN(w.gate, checker.Slabs(prefix + "mlp.gate_proj.weight", ff, d, /*split_rows=*/true));
  MF_ASSIGN_OR_RETURN(w.up, checker.Slabs(prefix + "mlp.up_proj.weight", ff, d, /*split_rows=*/true));
  MF_ASSIGN_OR_RETURN(w.down, checker.Slabs(prefix + "mlp.down_proj.weight", d, ff, /*split_rows=*/false));
  MF_ASSIGN_OR_RETURN(w.ple_gate, checker.Matrix(prefix + "per_layer_input_gate.weight", c.ple_dim, d));
  MF_ASSIGN_OR_RETURN(w.ple_projection, checker.Matrix(prefix + "per_layer_projection.weight", d, c.ple_dim));
  return w;
}

}  // namespace

absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& c, const SafetensorsFile& file) {
  TensorChecker checker(c, file);
  const int64_t d = c.hidden_size;
  const int64_t ple_width = c.num_layers * c.ple_dim;
  ModelWeights w;
  MF_ASSIGN_OR_RETURN(w.embed, checker.Get("model.embed_tokens.weight", {c.vocab_size, d}));
  MF_ASSIGN_OR_RETURN(w.ple_table, checker.Get("model.embed_tokens_per_layer.weight", {c.vocab_size, ple_width}));
  MF_ASSIGN_OR_RETURN(w.ple_model_projection,
                   checker.Matrix("model.per_layer_model_projection.weight", ple_width, d));
  MF_ASSIGN_OR_RETURN(w.ple_projection_norm, checker.Vector("model.per_layer_projection_norm.weight", c.ple_dim));
  MF_ASSIGN_OR_RETURN(w.final_norm, checker.Vector("model.norm.weight", d));
  MF_ASSIGN_OR_RETURN(w.lm_head, PackedMatrix::PackAll(w.embed));
  for (int layer = 0; layer < c.num_layers; ++layer) {
    MF_ASSIGN_OR_RETURN(LayerWeights layer_weights, LoadLayer(c, checker, layer));
    w.layers.push_back(std::move(layer_weights));
  }
  MF_RETURN_IF_ERROR(checker.CheckNoExtraTensors());
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
