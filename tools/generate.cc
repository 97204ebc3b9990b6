// matformer-generate: runs one prompt through any submodel of a model
// directory on the command line (no server needed).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "core/engine.h"
#include "core/generate.h"

ABSL_FLAG(std::string, model_dir, "models/default", "Model directory (config.json, model.safetensors, tokenizer.model)");
ABSL_FLAG(std::string, prompt, "In the beginning", "Prompt text");
ABSL_FLAG(std::string, spec, "XL", "Submodel: a granularity (S, M, L, XL) or one per layer, e.g. S-S-M-M-L-XL or S-skip-M-M-L-L");
ABSL_FLAG(int, max_new_tokens, 48, "Tokens to generate");
ABSL_FLAG(double, temperature, 0.0, "0 = greedy");
ABSL_FLAG(int, top_k, 0, "0 = no limit");
ABSL_FLAG(double, top_p, 1.0, "Nucleus sampling mass");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed");
ABSL_FLAG(std::vector<std::string>, stop, {}, "Stop sequences, comma-separated");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Generates text from a prompt with a MatFormer submodel.");
  absl::ParseCommandLine(argc, argv);
  auto fail = [](const absl::Status& status) {
    std::fprintf(stderr, "matformer-generate: %s\n", status.ToString().c_str());
    return 1;
  };
  const auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<matformer::Model>> model = matformer::Model::Load(absl::GetFlag(FLAGS_model_dir));
  if (!model.ok()) return fail(model.status());
  std::shared_ptr<const matformer::Model> shared_model = *std::move(model);
  absl::StatusOr<std::unique_ptr<matformer::Engine>> engine = matformer::Engine::Create(shared_model, {});
  if (!engine.ok()) return fail(engine.status());
  absl::StatusOr<matformer::SubmodelSpec> spec =
      matformer::SubmodelSpec::Parse(shared_model->config(), absl::GetFlag(FLAGS_spec));
  if (!spec.ok()) return fail(spec.status());
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  matformer::GenerateRequest request;
  absl::StatusOr<std::vector<int>> prompt = shared_model->tokenizer().Encode(absl::GetFlag(FLAGS_prompt));
  if (!prompt.ok()) return fail(prompt.status());
  request.prompt.push_back(shared_model->config().bos_token_id);
  request.prompt.insert(request.prompt.end(), prompt->begin(), prompt->end());
  request.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  request.sampling = {.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature)),
                      .top_k = absl::GetFlag(FLAGS_top_k),
                      .top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p)),
                      .seed = absl::GetFlag(FLAGS_seed)};
  request.stop_sequences = absl::GetFlag(FLAGS_stop);

  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<matformer::GenerateResult> result = matformer::GenerateAlone(**engine, *spec, request);
  if (!result.ok()) return fail(result.status());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << absl::GetFlag(FLAGS_prompt) << result->text << "\n";
  std::fprintf(stderr,
               "[spec %s, %.2f M active params, %zu prompt + %zu new tokens in %.3f s (%.1f tok/s), "
               "finish: %s, load %.2f s]\n",
               spec->name().c_str(), spec->active_params() / 1e6, request.prompt.size(), result->tokens.size(),
               seconds, result->tokens.size() / seconds,
               std::string(matformer::FinishReasonName(result->finish_reason)).c_str(), load_seconds);
  return 0;
}
