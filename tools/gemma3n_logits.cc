// matformer-gemma3n-logits: runs a token sequence through a slice of a Hugging
// Face Gemma 3n checkpoint (prefill, then KV-cached decoding of the remaining
// tokens one at a time) and writes the logits of every position as a float32
// .npy [T, V], like matformer-logits does for the repo's own format.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "core/gemma3n/model.h"
#include "core/util/status_macros.h"
#include "tools/gemma3n_slice_flags.h"
#include "tools/npy_writer.h"

ABSL_FLAG(std::string, model_dir, "tests/data/gemma3n-tiny", "Hugging Face Gemma 3n checkpoint directory");
ABSL_FLAG(std::string, tokens, "", "Comma-separated token ids");
ABSL_FLAG(int, prefill, 0, "Tokens to prefill in one step (0 = all); the rest are decoded one per step");
ABSL_FLAG(std::string, out, "", "Output .npy file");
ABSL_FLAG(int64_t, ffn_granule, 2048, "FFN slab width: slices may use multiples of it");
ABSL_FLAG(std::string, slice_table, "", "Published slicing table (CSV); with --slice_name picks a row");
ABSL_FLAG(std::string, slice_name, "", "Row name in --slice_table, e.g. 'Config for official E2B Model'");
ABSL_FLAG(std::string, widths, "", "FFN width per kept layer, comma-separated (one value = all kept layers)");
ABSL_FLAG(std::string, skip, "", "Skipped layers, comma-separated");

namespace {

absl::Status Run() {
  using matformer::gemma3n::Model;
  MF_ASSIGN_OR_RETURN(std::unique_ptr<Model> model,
                      Model::Load(absl::GetFlag(FLAGS_model_dir), {.ffn_granule = absl::GetFlag(FLAGS_ffn_granule)}));
  MF_ASSIGN_OR_RETURN(matformer::gemma3n::Slice slice,
                      matformer::tools::SliceFromFlags(model->config(), model->ffn_granule(),
                                                       absl::GetFlag(FLAGS_slice_table), absl::GetFlag(FLAGS_slice_name),
                                                       absl::GetFlag(FLAGS_widths), absl::GetFlag(FLAGS_skip)));
  MF_ASSIGN_OR_RETURN(std::vector<int64_t> ids, matformer::tools::ParseIntList("--tokens", absl::GetFlag(FLAGS_tokens)));
  if (ids.empty()) return absl::InvalidArgumentError("--tokens: empty");
  if (absl::GetFlag(FLAGS_out).empty()) return absl::InvalidArgumentError("--out: missing");
  const std::vector<int32_t> tokens(ids.begin(), ids.end());
  const int prefill = absl::GetFlag(FLAGS_prefill) > 0 ? absl::GetFlag(FLAGS_prefill) : static_cast<int>(tokens.size());
  if (prefill > static_cast<int>(tokens.size())) return absl::InvalidArgumentError("--prefill exceeds --tokens");

  const std::unique_ptr<matformer::KvPool> pool =
      model->NewKvPool((static_cast<int64_t>(tokens.size()) + 15) / 16, 16);
  matformer::gemma3n::KvCache cache(pool.get());
  const auto span = absl::MakeConstSpan(tokens);
  MF_ASSIGN_OR_RETURN(std::vector<float> all, model->Forward(slice, span.subspan(0, prefill), cache, {.all_logits = true}));
  for (size_t t = prefill; t < tokens.size(); ++t) {
    MF_ASSIGN_OR_RETURN(std::vector<float> logits, model->Forward(slice, span.subspan(t, 1), cache));
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return matformer::tools::WriteNpy(absl::GetFlag(FLAGS_out), all, static_cast<int64_t>(tokens.size()),
                                    model->config().vocab_size);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Writes the logits of a token sequence under a Gemma 3n slice as .npy.");
  absl::ParseCommandLine(argc, argv);
  if (absl::Status status = Run(); !status.ok()) {
    std::fprintf(stderr, "matformer-gemma3n-logits: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
