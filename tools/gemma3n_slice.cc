// matformer-gemma3n-slice: writes a slice of a Hugging Face Gemma 3n checkpoint
// as its own text-only checkpoint (what Google's MatFormer Lab notebook does),
// e.g. the E2B row of the published table out of E4B.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "core/gemma3n/config.h"
#include "core/gemma3n/slicer.h"
#include "core/util/status_macros.h"
#include "tools/gemma3n_slice_flags.h"

ABSL_FLAG(std::string, model_dir, "", "Source Hugging Face Gemma 3n checkpoint directory");
ABSL_FLAG(std::string, out_dir, "", "Directory to write the sliced checkpoint to");
ABSL_FLAG(std::string, slice_table, "", "Published slicing table (CSV); with --slice_name picks a row");
ABSL_FLAG(std::string, slice_name, "", "Row name in --slice_table");
ABSL_FLAG(std::string, widths, "", "FFN width per kept layer, comma-separated (one value = all kept layers)");
ABSL_FLAG(std::string, skip, "", "Skipped layers, comma-separated");

namespace {

absl::Status Run() {
  const std::string source = absl::GetFlag(FLAGS_model_dir), out = absl::GetFlag(FLAGS_out_dir);
  if (source.empty() || out.empty()) return absl::InvalidArgumentError("--model_dir and --out_dir are required");
  MF_ASSIGN_OR_RETURN(matformer::gemma3n::Config config, matformer::gemma3n::LoadConfig(source + "/config.json"));
  // Offline slicing may cut any width, not only slab multiples.
  MF_ASSIGN_OR_RETURN(matformer::gemma3n::Slice slice,
                      matformer::tools::SliceFromFlags(config, /*ffn_granule=*/1, absl::GetFlag(FLAGS_slice_table),
                                                       absl::GetFlag(FLAGS_slice_name), absl::GetFlag(FLAGS_widths),
                                                       absl::GetFlag(FLAGS_skip)));
  return matformer::gemma3n::WriteSlicedCheckpoint(source, slice, out);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Writes a MatFormer slice of a Gemma 3n checkpoint as its own checkpoint.");
  absl::ParseCommandLine(argc, argv);
  if (absl::Status status = Run(); !status.ok()) {
    std::fprintf(stderr, "matformer-gemma3n-slice: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
