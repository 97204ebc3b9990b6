// matformer-eval: held-out loss and perplexity of submodels, computed by the
// engine, and (with --write_quality) the model's quality.json for the planner.
//
// Protocol (the same as train/matformer_ref/evaluate.py, so the PyTorch
// reference can check it): every non-empty line of the held-out text is a
// document; the stream is [BOS] tokens [EOS] per document; it is cut into
// blocks of --context tokens (a last block of >= 2 tokens is kept); each block
// runs from position 0 and every token but its first is predicted once.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/engine.h"
#include "core/sampler.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, model_dir, "models/default", "Model directory");
ABSL_FLAG(std::string, heldout, "", "Held-out text, one document per line (default: <model_dir>/heldout.txt)");
ABSL_FLAG(std::string, specs, "frontier",
          "Comma-separated spec names, or 'frontier': every granularity, every spec whose widths never decrease "
          "with depth, the reverse (decreasing) twin of each, and one skipped layer per position at XL");
ABSL_FLAG(int, context, 256, "Tokens per block");
ABSL_FLAG(std::string, kv_dtype, "auto", "KV cache storage: auto (the model's dtype), f32, bf16 or int8");
ABSL_FLAG(int, max_blocks, 0, "Evaluate only the first N blocks (0 = all)");
ABSL_FLAG(bool, write_quality, false, "Write <model_dir>/quality.json");
ABSL_FLAG(std::string, json_out, "", "Also write the results as JSON here");

namespace matformer {
namespace {

constexpr int kBlocksPerStep = 8;
constexpr int kMaxFrontierSpecs = 2000;

// Every width sequence that never decreases with depth (the MatFormer paper's
// Mix'n'Match heuristic), plus each one's reversed, decreasing twin of the
// same size, plus XL with one layer skipped.
absl::StatusOr<std::vector<SubmodelSpec>> Frontier(const ModelConfig& config) {
  std::vector<std::vector<int64_t>> sequences = {{}};
  for (int layer = 0; layer < config.num_layers; ++layer) {
    std::vector<std::vector<int64_t>> longer;
    for (const auto& prefix : sequences) {
      for (int64_t width : config.granularities) {
        if (!prefix.empty() && width < prefix.back()) continue;
        longer.push_back(prefix);
        longer.back().push_back(width);
      }
    }
    sequences = std::move(longer);
    if (sequences.size() > kMaxFrontierSpecs) {
      return absl::InvalidArgumentError(absl::StrCat("more than ", kMaxFrontierSpecs,
                                                     " non-decreasing specs; pass --specs explicitly"));
    }
  }
  std::vector<SubmodelSpec> specs;
  for (const auto& widths : sequences) {
    MF_ASSIGN_OR_RETURN(SubmodelSpec spec, SubmodelSpec::Create(config, widths, {}));
    specs.push_back(spec);
    std::vector<int64_t> reversed(widths.rbegin(), widths.rend());
    if (reversed != widths) {
      MF_ASSIGN_OR_RETURN(SubmodelSpec twin, SubmodelSpec::Create(config, reversed, {}));
      specs.push_back(twin);
    }
  }
  for (int layer = 0; layer < config.num_layers && config.num_layers > 1; ++layer) {
    MF_ASSIGN_OR_RETURN(SubmodelSpec skip, SubmodelSpec::Create(
                                               config, std::vector<int64_t>(config.num_layers, config.granularities.back()), {layer}));
    specs.push_back(skip);
  }
  return specs;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> LoadBlocks(const Model& model, const std::string& path,
                                                             int context, int max_blocks) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat("cannot read held-out text '", path, "'"));
  std::vector<int32_t> stream;
  std::string line;
  while (std::getline(file, line)) {
    if (line.empty()) continue;
    MF_ASSIGN_OR_RETURN(std::vector<int> ids, model.tokenizer().Encode(line));
    stream.push_back(model.config().bos_token_id);
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(model.config().eos_token_id);
  }
  std::vector<std::vector<int32_t>> blocks;
  for (size_t begin = 0; begin < stream.size(); begin += context) {
    const size_t end = std::min(stream.size(), begin + context);
    if (end - begin >= 2) blocks.emplace_back(stream.begin() + begin, stream.begin() + end);
    if (max_blocks > 0 && static_cast<int>(blocks.size()) == max_blocks) break;
  }
  if (blocks.empty()) return absl::InvalidArgumentError(absl::StrCat("'", path, "' holds no block of >= 2 tokens"));
  return blocks;
}

struct Evaluation {
  double loss = 0.0;
  int64_t tokens = 0;
};

absl::StatusOr<Evaluation> Evaluate(Engine& engine, const SubmodelSpec& spec,
                                    const std::vector<std::vector<int32_t>>& blocks) {
  const int64_t vocab = engine.config().vocab_size;
  double total = 0.0;
  int64_t count = 0;
  for (size_t first = 0; first < blocks.size(); first += kBlocksPerStep) {
    const size_t last = std::min(blocks.size(), first + kBlocksPerStep);
    std::vector<std::unique_ptr<Sequence>> sequences;
    std::vector<StepInput> inputs;
    for (size_t b = first; b < last; ++b) {
      sequences.push_back(engine.NewSequence(spec));
      inputs.push_back({sequences.back().get(), absl::MakeConstSpan(blocks[b]).first(blocks[b].size() - 1),
                        /*all_logits=*/true});
    }
    MF_ASSIGN_OR_RETURN(std::vector<float> logits, engine.Step(inputs));
    size_t row = 0;
    for (size_t b = first; b < last; ++b) {
      for (size_t t = 1; t < blocks[b].size(); ++t, ++row) {
        total -= LogProbability(absl::MakeConstSpan(logits).subspan(row * vocab, vocab), blocks[b][t]);
        ++count;
      }
    }
  }
  return Evaluation{total / count, count};
}

absl::Status Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  MF_ASSIGN_OR_RETURN(std::shared_ptr<const Model> model, Model::Load(model_dir));
  const int context = absl::GetFlag(FLAGS_context);
  if (context < 2 || context > model->config().max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--context = ", context, " outside [2, ",
                                                   model->config().max_position_embeddings, "]"));
  }
  const int64_t blocks_per_sequence = (context + 15) / 16;
  absl::StatusOr<std::optional<KvDtype>> kv_dtype = ParseKvDtype(absl::GetFlag(FLAGS_kv_dtype));
  if (!kv_dtype.ok()) return absl::InvalidArgumentError(absl::StrCat("--", kv_dtype.status().message()));
  MF_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                      Engine::Create(model, {.kv_blocks = kBlocksPerStep * blocks_per_sequence,
                                             .kv_block_tokens = 16,
                                             .kv_dtype = *kv_dtype,
                                             .ple_cache_bytes = size_t{64} << 20}));
  const std::string heldout =
      absl::GetFlag(FLAGS_heldout).empty() ? model_dir + "/heldout.txt" : absl::GetFlag(FLAGS_heldout);
  MF_ASSIGN_OR_RETURN(auto blocks, LoadBlocks(*model, heldout, context, absl::GetFlag(FLAGS_max_blocks)));

  std::vector<SubmodelSpec> specs;
  if (absl::GetFlag(FLAGS_specs) == "frontier") {
    MF_ASSIGN_OR_RETURN(specs, Frontier(model->config()));
  } else {
    for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_specs), ',', absl::SkipEmpty())) {
      MF_ASSIGN_OR_RETURN(SubmodelSpec spec, SubmodelSpec::Parse(model->config(), name));
      specs.push_back(spec);
    }
  }
  nlohmann::json results = nlohmann::json::array();
  int64_t tokens = 0;
  std::printf("%-28s %14s %9s %9s %s\n", "spec", "active params", "loss", "ppl", "widths never decrease");
  for (const SubmodelSpec& spec : specs) {
    MF_ASSIGN_OR_RETURN(Evaluation evaluation, Evaluate(*engine, spec, blocks));
    tokens = evaluation.tokens;
    std::printf("%-28s %14lld %9.5f %9.3f %s\n", spec.name().c_str(), static_cast<long long>(spec.active_params()),
                evaluation.loss, std::exp(evaluation.loss), spec.NonDecreasing() ? "yes" : "no");
    std::fflush(stdout);
    results.push_back({{"name", spec.name()},
                       {"active_params", spec.active_params()},
                       {"loss", evaluation.loss},
                       {"ppl", std::exp(evaluation.loss)},
                       {"non_decreasing", spec.NonDecreasing()},
                       {"skipped_layers", spec.SkippedLayers()}});
  }
  const nlohmann::json report = {{"dataset", heldout},
                                 {"tokens", tokens},
                                 {"context", context},
                                 {"kv_dtype", std::string(KvDtypeName(engine->kv_pool().dtype()))},
                                 {"evaluated_by", "matformer-eval (C++ engine)"},
                                 {"specs", results}};
  auto write = [&](const std::string& path) -> absl::Status {
    std::ofstream out(path);
    out << report.dump(1) << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
    std::fprintf(stderr, "wrote %s\n", path.c_str());
    return absl::OkStatus();
  };
  if (absl::GetFlag(FLAGS_write_quality)) MF_RETURN_IF_ERROR(write(model_dir + "/quality.json"));
  if (!absl::GetFlag(FLAGS_json_out).empty()) MF_RETURN_IF_ERROR(write(absl::GetFlag(FLAGS_json_out)));
  return absl::OkStatus();
}

}  // namespace
}  // namespace matformer

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Held-out loss of submodels with the C++ engine; writes quality.json.");
  absl::ParseCommandLine(argc, argv);
  if (absl::Status status = matformer::Run(); !status.ok()) {
    std::fprintf(stderr, "matformer-eval: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
