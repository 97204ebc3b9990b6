// matformer-make-random-model: writes a model directory (docs/model-format.md)
// with random weights for any dimensions, for tests, parity checks and
// benchmarks that need a model of a given size rather than a trained one.
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numbers>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/model/config.h"
#include "core/model/random_model.h"
#include "core/model/safetensors.h"
#include "core/model/tokenizer.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, out, "",
          "Output model directory (created if missing; existing model files are replaced)");
ABSL_FLAG(std::string, tokenizer, "",
          "SentencePiece model copied to tokenizer.model; its piece count must be <= the vocab size");
ABSL_FLAG(
    std::string, preset, "default",
    "Dimensions for every dimension flag left at 0: 'default' (6 layers, hidden 384, intermediate 1536, "
    "vocab 4096) or '350m' (16 layers, hidden 1024, intermediate 4096, vocab 32000: ~348 M parameters)");
ABSL_FLAG(int64_t, layers, 0, "num_hidden_layers (0: from --preset)");
ABSL_FLAG(int64_t, hidden, 0, "hidden_size (0: from --preset)");
ABSL_FLAG(int64_t, intermediate, 0, "intermediate_size, the XL FFN width (0: from --preset)");
ABSL_FLAG(int64_t, heads, 0, "num_attention_heads (0: from --preset)");
ABSL_FLAG(int64_t, kv_heads, 0, "num_key_value_heads (0: from --preset)");
ABSL_FLAG(int64_t, head_dim, 0, "head_dim (0: from --preset)");
ABSL_FLAG(int64_t, ple_dim, 0, "hidden_size_per_layer_input (0: from --preset)");
ABSL_FLAG(int64_t, vocab, 0, "vocab_size (0: from --preset)");
ABSL_FLAG(int64_t, max_position_embeddings, 0, "Longest sequence (0: from --preset)");
ABSL_FLAG(std::vector<std::string>, granularities, {},
          "Comma-separated FFN widths, strictly increasing, the last == intermediate size "
          "(default: intermediate/8, /4, /2, /1)");
ABSL_FLAG(std::vector<std::string>, granularity_names, {},
          "One name per granularity (default: S,M,L,XL for 4 granularities, otherwise the widths)");
ABSL_FLAG(std::string, dtype, "bf16", "Weight dtype: bf16 or f32");
ABSL_FLAG(std::string, activation, "gelu_pytorch_tanh", "hidden_activation: gelu_pytorch_tanh or silu");
ABSL_FLAG(double, rope_theta, 10000.0, "RoPE base");
ABSL_FLAG(int64_t, bos_id, 2, "bos_token_id (the project's tokenizers: pad 0, eos 1, bos 2, unk 3)");
ABSL_FLAG(int64_t, eos_id, 1, "eos_token_id");
ABSL_FLAG(int64_t, pad_id, 0, "pad_token_id");
ABSL_FLAG(uint64_t, seed, 1, "Random seed; the same flags and seed give the same file");

namespace matformer {
namespace {

constexpr int kUsageExit = 2;
constexpr int kRuntimeExit = 1;

struct Preset {
  int64_t layers, hidden, intermediate, heads, kv_heads, head_dim, ple_dim, vocab, max_positions;
};

absl::StatusOr<Preset> FindPreset(const std::string& name) {
  if (name == "default") return Preset{6, 384, 1536, 6, 2, 64, 64, 4096, 1024};
  if (name == "350m") return Preset{16, 1024, 4096, 16, 4, 64, 128, 32000, 2048};
  return absl::InvalidArgumentError(absl::StrCat("--preset=", name, ": expected default or 350m"));
}

int64_t FlagOr(int64_t flag, int64_t preset) { return flag != 0 ? flag : preset; }

absl::StatusOr<std::vector<int64_t>> Granularities(const std::vector<std::string>& flag,
                                                   int64_t intermediate) {
  std::vector<int64_t> widths;
  if (flag.empty()) {
    if (intermediate <= 0 || intermediate % 8 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "intermediate size ", intermediate, " is not a positive multiple of 8; pass --granularities"));
    }
    for (int64_t divisor : {8, 4, 2, 1}) widths.push_back(intermediate / divisor);
    return widths;
  }
  for (const std::string& text : flag) {
    int64_t width = 0;
    if (!absl::SimpleAtoi(text, &width)) {
      return absl::InvalidArgumentError(absl::StrCat("--granularities: '", text, "' is not an integer"));
    }
    widths.push_back(width);
  }
  return widths;
}

std::vector<std::string> GranularityNames(const std::vector<std::string>& flag,
                                          const std::vector<int64_t>& widths) {
  if (!flag.empty()) return flag;
  if (widths.size() == 4) return {"S", "M", "L", "XL"};
  std::vector<std::string> names;
  for (int64_t width : widths) names.push_back(absl::StrCat(width));
  return names;
}

// Builds config.json from the flags and validates it with the same parser the
// engine uses, so every limit is checked in one place.
absl::StatusOr<ModelConfig> ConfigFromFlags() {
  MF_ASSIGN_OR_RETURN(const Preset preset, FindPreset(absl::GetFlag(FLAGS_preset)));
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype != "bf16" && dtype != "f32") {
    return absl::InvalidArgumentError(absl::StrCat("--dtype=", dtype, ": expected bf16 or f32"));
  }
  const int64_t intermediate = FlagOr(absl::GetFlag(FLAGS_intermediate), preset.intermediate);
  MF_ASSIGN_OR_RETURN(const std::vector<int64_t> widths,
                      Granularities(absl::GetFlag(FLAGS_granularities), intermediate));

  nlohmann::json json = {
      {"model_type", "matformer_ple"},
      {"vocab_size", FlagOr(absl::GetFlag(FLAGS_vocab), preset.vocab)},
      {"hidden_size", FlagOr(absl::GetFlag(FLAGS_hidden), preset.hidden)},
      {"intermediate_size", intermediate},
      {"num_hidden_layers", FlagOr(absl::GetFlag(FLAGS_layers), preset.layers)},
      {"num_attention_heads", FlagOr(absl::GetFlag(FLAGS_heads), preset.heads)},
      {"num_key_value_heads", FlagOr(absl::GetFlag(FLAGS_kv_heads), preset.kv_heads)},
      {"head_dim", FlagOr(absl::GetFlag(FLAGS_head_dim), preset.head_dim)},
      {"hidden_size_per_layer_input", FlagOr(absl::GetFlag(FLAGS_ple_dim), preset.ple_dim)},
      {"granularities", widths},
      {"granularity_names", GranularityNames(absl::GetFlag(FLAGS_granularity_names), widths)},
      {"rope_theta", absl::GetFlag(FLAGS_rope_theta)},
      {"rms_norm_eps", 1e-6},
      {"max_position_embeddings", FlagOr(absl::GetFlag(FLAGS_max_position_embeddings), preset.max_positions)},
      {"hidden_activation", absl::GetFlag(FLAGS_activation)},
      {"tie_word_embeddings", true},
      {"torch_dtype", dtype == "bf16" ? "bfloat16" : "float32"},
      {"bos_token_id", absl::GetFlag(FLAGS_bos_id)},
      {"eos_token_id", absl::GetFlag(FLAGS_eos_id)},
      {"pad_token_id", absl::GetFlag(FLAGS_pad_id)},
  };
  // The replace handler keeps dump() from throwing on a flag value that is not UTF-8.
  return ParseModelConfig(json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

std::string FileSize(const std::filesystem::path& path) {
  std::error_code error;
  const uintmax_t bytes = std::filesystem::file_size(path, error);
  if (error) return "?";
  return bytes < 1000000 ? absl::StrCat(bytes, " bytes") : absl::StrFormat("%.1f MB", bytes / 1e6);
}

int Run() {
  auto usage_error = [](const absl::Status& status) {
    std::fprintf(stderr, "matformer-make-random-model: %s\n", std::string(status.message()).c_str());
    return kUsageExit;
  };
  auto runtime_error = [](const absl::Status& status) {
    std::fprintf(stderr, "matformer-make-random-model: %s\n", status.ToString().c_str());
    return kRuntimeExit;
  };

  const std::filesystem::path out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return usage_error(absl::InvalidArgumentError("--out is required"));
  const std::string tokenizer_path = absl::GetFlag(FLAGS_tokenizer);
  if (tokenizer_path.empty()) {
    return usage_error(absl::InvalidArgumentError("--tokenizer is required (a SentencePiece model)"));
  }
  auto config = ConfigFromFlags();
  if (!config.ok()) return usage_error(config.status());
  // WriteRandomModel copies any tokenizer (tests use it to build broken
  // models); the tool refuses one the engine would not load.
  auto tokenizer = Tokenizer::Load(tokenizer_path, config->vocab_size);
  if (!tokenizer.ok()) return usage_error(tokenizer.status());

  const auto start = std::chrono::steady_clock::now();
  const absl::Status written =
      WriteRandomModel(*config, absl::GetFlag(FLAGS_seed), out.string(), tokenizer_path);
  if (!written.ok()) return runtime_error(written);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const int64_t parameters = StoredParameterCount(*config);
  std::printf("wrote %s in %.1f s\n", out.c_str(), seconds);
  std::printf("  parameters         %lld (%.1f M), %s\n", static_cast<long long>(parameters),
              parameters / 1e6, std::string(DTypeName(config->dtype)).c_str());
  std::printf("  layers %d, hidden %lld, intermediate %lld, granularities %s (%s)\n", config->num_layers,
              static_cast<long long>(config->hidden_size), static_cast<long long>(config->intermediate_size),
              absl::StrJoin(config->granularities, ",").c_str(),
              absl::StrJoin(config->granularity_names, ",").c_str());
  std::printf("  config.json        %s\n", FileSize(out / "config.json").c_str());
  std::printf("  model.safetensors  %s\n", FileSize(out / "model.safetensors").c_str());
  std::printf("  tokenizer.model    %s (%d pieces)\n", FileSize(out / "tokenizer.model").c_str(),
              (*tokenizer)->vocab_size());
  return 0;
}

}  // namespace
}  // namespace matformer

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Writes a MatFormer model directory (config.json, model.safetensors, tokenizer.model) with random "
      "weights.\nExample: matformer-make-random-model --out=/tmp/m --tokenizer=tests/data/gemma3n-tiny/"
      "tokenizer.model --preset=350m");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::fprintf(stderr, "matformer-make-random-model: unexpected argument '%s' (flags are --name=value)\n",
                 positional[1]);
    return matformer::kUsageExit;
  }
  return matformer::Run();
}
