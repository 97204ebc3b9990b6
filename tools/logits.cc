// matformer-logits: runs a fixed token sequence through a submodel (prefill,
// then KV-cached decoding of the remaining tokens one at a time) and writes
// the logits of every position as a float32 .npy [T, V]. The parity tests
// compare this with the PyTorch reference.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/engine.h"
#include "core/util/status_macros.h"
#include "tools/npy_writer.h"

ABSL_FLAG(std::string, model_dir, "models/default", "Model directory");
ABSL_FLAG(std::string, spec, "XL", "Submodel spec");
ABSL_FLAG(std::string, tokens, "", "Comma-separated token ids");
ABSL_FLAG(int, prefill, 0, "Tokens to prefill in one step (0 = all); the rest are decoded one per step");
ABSL_FLAG(std::string, out, "", "Output .npy file");

namespace {

absl::Status Run() {
  MF_ASSIGN_OR_RETURN(std::shared_ptr<const matformer::Model> model,
                      matformer::Model::Load(absl::GetFlag(FLAGS_model_dir)));
  MF_ASSIGN_OR_RETURN(auto engine, matformer::Engine::Create(model, {}));
  MF_ASSIGN_OR_RETURN(auto spec, matformer::SubmodelSpec::Parse(model->config(), absl::GetFlag(FLAGS_spec)));
  std::vector<int32_t> tokens;
  for (absl::string_view piece : absl::StrSplit(absl::GetFlag(FLAGS_tokens), ',', absl::SkipEmpty())) {
    int32_t token;
    if (!absl::SimpleAtoi(piece, &token)) return absl::InvalidArgumentError(absl::StrCat("--tokens: '", piece, "'"));
    tokens.push_back(token);
  }
  if (tokens.empty()) return absl::InvalidArgumentError("--tokens: empty");
  const int prefill = absl::GetFlag(FLAGS_prefill) > 0 ? absl::GetFlag(FLAGS_prefill) : static_cast<int>(tokens.size());
  if (prefill > static_cast<int>(tokens.size())) return absl::InvalidArgumentError("--prefill exceeds --tokens");

  auto sequence = engine->NewSequence(spec);
  std::vector<float> all;
  matformer::StepInput input{sequence.get(), absl::MakeConstSpan(tokens).subspan(0, prefill), /*all_logits=*/true};
  MF_ASSIGN_OR_RETURN(all, engine->Step({&input, 1}));
  for (size_t t = prefill; t < tokens.size(); ++t) {
    matformer::StepInput step{sequence.get(), absl::MakeConstSpan(tokens).subspan(t, 1)};
    MF_ASSIGN_OR_RETURN(std::vector<float> logits, engine->Step({&step, 1}));
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return matformer::tools::WriteNpy(absl::GetFlag(FLAGS_out), all, static_cast<int64_t>(tokens.size()), model->config().vocab_size);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Writes the logits of a token sequence under a submodel as .npy.");
  absl::ParseCommandLine(argc, argv);
  if (absl::Status status = Run(); !status.ok()) {
    std::fprintf(stderr, "matformer-logits: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
