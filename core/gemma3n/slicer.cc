#include "core/gemma3n/slicer.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/gemma3n/config.h"
#include "core/gemma3n/weights.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace matformer::gemma3n {
namespace {

using Json = nlohmann::json;

// Rows [r0, r1) x columns [c0, c1) of a 2-D tensor (or elements [c0, c1) of a
// 1-D one), as raw bytes in the tensor's dtype.
std::vector<std::byte> Block(const TensorView& t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  const int64_t cols = t.shape.back();
  const size_t element = DTypeSize(t.dtype);
  std::vector<std::byte> bytes;
  bytes.reserve((r1 - r0) * (c1 - c0) * element);
  for (int64_t r = r0; r < r1; ++r) {
    const std::byte* row = t.data + (r * cols + c0) * element;
    bytes.insert(bytes.end(), row, row + (c1 - c0) * element);
  }
  return bytes;
}

std::vector<std::byte> Whole(const TensorView& t) { return std::vector<std::byte>(t.data, t.data + t.nbytes); }

}  // namespace

absl::Status WriteSlicedCheckpoint(const std::string& source_dir, const Slice& slice, const std::string& out_dir) {
  MF_ASSIGN_OR_RETURN(const Config c, LoadConfig(source_dir + "/config.json"));
  MF_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(source_dir));
  MF_RETURN_IF_ERROR(ValidateCheckpoint(c, *checkpoint));
  const int L = c.num_layers;
  if (static_cast<int>(slice.skipped.size()) != L) {
    return absl::InvalidArgumentError(absl::StrCat("slice '", slice.name, "' is not for a ", L, "-layer model"));
  }
  std::vector<int> kept;         // original index of each new layer
  std::vector<int> new_index(L, -1);
  for (int l = 0; l < L; ++l) {
    if (slice.skipped[l]) continue;
    new_index[l] = static_cast<int>(kept.size());
    kept.push_back(l);
  }
  const int64_t dp = c.hidden_size_per_layer_input;
  const std::string& prefix = checkpoint->prefix();
  auto get = [&](const std::string& name) { return *checkpoint->Get(name); };

  std::vector<TensorToWrite> out;
  auto emit = [&](const std::string& name, const TensorView& t, std::vector<int64_t> shape, std::vector<std::byte> bytes) {
    out.push_back({prefix + name, t.dtype, std::move(shape), std::move(bytes)});
  };
  for (const std::string& name : checkpoint->Names()) {
    const TensorView t = get(name);
    if (!absl::StartsWith(name, "layers.")) {
      if (name == "embed_tokens_per_layer.weight" || name == "per_layer_model_projection.weight") {
        // [V, L*dp] columns or [L*dp, d] rows: keep the kept layers' chunks.
        const bool by_columns = name == "embed_tokens_per_layer.weight";
        std::vector<std::byte> bytes;
        if (by_columns) {
          for (int64_t r = 0; r < t.shape[0]; ++r) {
            for (int l : kept) {
              std::vector<std::byte> part = Block(t, r, r + 1, l * dp, (l + 1) * dp);
              bytes.insert(bytes.end(), part.begin(), part.end());
            }
          }
          emit(name, t, {t.shape[0], static_cast<int64_t>(kept.size()) * dp}, std::move(bytes));
        } else {
          for (int l : kept) {
            std::vector<std::byte> part = Block(t, l * dp, (l + 1) * dp, 0, t.shape[1]);
            bytes.insert(bytes.end(), part.begin(), part.end());
          }
          emit(name, t, {static_cast<int64_t>(kept.size()) * dp, t.shape[1]}, std::move(bytes));
        }
      } else {
        emit(name, t, t.shape, Whole(t));
      }
      continue;
    }
    // layers.{l}.rest
    const std::vector<std::string> parts = absl::StrSplit(name, absl::MaxSplits('.', 2));
    int layer = -1;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[1], &layer) || layer < 0 || layer >= L) {
      return absl::InternalError(absl::StrCat("unexpected tensor name ", name));
    }
    if (slice.skipped[layer]) continue;
    const std::string& rest = parts[2];
    const std::string renamed = absl::StrCat("layers.", new_index[layer], ".", rest);
    const int64_t m = slice.ffn_width[layer];
    if (rest == "mlp.gate_proj.weight" || rest == "mlp.up_proj.weight") {
      emit(renamed, t, {m, t.shape[1]}, Block(t, 0, m, 0, t.shape[1]));
    } else if (rest == "mlp.down_proj.weight") {
      emit(renamed, t, {t.shape[0], m}, Block(t, 0, t.shape[0], 0, m));
    } else {
      emit(renamed, t, t.shape, Whole(t));
    }
  }

  // config.json: the text config with the sliced values.
  std::ifstream in(source_dir + "/config.json");
  Json root = Json::parse(in, nullptr, /*allow_exceptions=*/false);
  Json text = root.contains("text_config") ? root["text_config"] : root;
  int skipped_shared = 0;
  for (int l = c.first_kv_shared_layer(); l < L; ++l) skipped_shared += slice.skipped[l];
  Json layer_types = Json::array(), sparsity = Json::array(), widths = Json::array();
  for (int l : kept) {
    layer_types.push_back(c.layer_types[l] == LayerType::kFull ? "full_attention" : "sliding_attention");
    sparsity.push_back(c.activation_sparsity[l]);
    widths.push_back(slice.ffn_width[l]);
  }
  text["num_hidden_layers"] = kept.size();
  text["num_kv_shared_layers"] = c.num_kv_shared_layers - skipped_shared;
  text["layer_types"] = layer_types;
  text["activation_sparsity_pattern"] = sparsity;
  text["intermediate_size"] = widths;
  text["architectures"] = {"Gemma3nForCausalLM"};
  text["model_type"] = "gemma3n_text";

  // The sliced config must reproduce the slice's K/V sources, renumbered.
  MF_ASSIGN_OR_RETURN(const Config sliced, ParseConfig(text.dump()));
  MF_ASSIGN_OR_RETURN(const std::vector<int> sources, KvSourceLayers(sliced, {}));
  for (size_t i = 0; i < kept.size(); ++i) {
    if (sources[i] != new_index[slice.kv_source[kept[i]]]) {
      return absl::InternalError(absl::StrCat("sliced config: layer ", i, " (was ", kept[i], ") would read K/V of layer ",
                                              sources[i], ", the slice reads layer ", slice.kv_source[kept[i]]));
    }
  }

  std::error_code error;
  std::filesystem::create_directories(out_dir, error);
  if (error) return absl::InternalError(absl::StrCat("cannot create ", out_dir, ": ", error.message()));
  {
    std::ofstream config_out(out_dir + "/config.json");
    config_out << text.dump(2) << "\n";
    if (!config_out) return absl::InternalError(absl::StrCat("cannot write ", out_dir, "/config.json"));
  }
  MF_RETURN_IF_ERROR(WriteSafetensors(out_dir + "/model.safetensors", out));
  for (const char* file : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "generation_config.json"}) {
    const std::string from = absl::StrCat(source_dir, "/", file);
    if (!std::filesystem::exists(from)) continue;
    std::filesystem::copy_file(from, absl::StrCat(out_dir, "/", file),
                               std::filesystem::copy_options::overwrite_existing, error);
    if (error) return absl::InternalError(absl::StrCat("cannot copy ", from, ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace matformer::gemma3n
