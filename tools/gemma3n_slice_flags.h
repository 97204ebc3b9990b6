#ifndef MATFORMER_TOOLS_GEMMA3N_SLICE_FLAGS_H_
#define MATFORMER_TOOLS_GEMMA3N_SLICE_FLAGS_H_

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/gemma3n/slicing.h"
#include "core/util/status_macros.h"

// The Gemma 3n tools' way to name a slice on the command line: a row of the
// published slicing table (--slice_table + --slice_name), or explicit
// --widths (one per kept layer, or one for all) and --skip.
namespace matformer::tools {

inline absl::StatusOr<std::vector<int64_t>> ParseIntList(const std::string& flag, const std::string& text) {
  std::vector<int64_t> values;
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int64_t value;
    if (!absl::SimpleAtoi(piece, &value)) return absl::InvalidArgumentError(absl::StrCat(flag, ": '", piece, "' is not an integer"));
    values.push_back(value);
  }
  return values;
}

inline absl::StatusOr<gemma3n::Slice> SliceFromFlags(const gemma3n::Config& config, int64_t ffn_granule,
                                                     const std::string& table_path, const std::string& row_name,
                                                     const std::string& widths_text, const std::string& skip_text) {
  if (!table_path.empty()) {
    std::ifstream in(table_path);
    if (!in) return absl::NotFoundError(absl::StrCat("--slice_table: cannot open '", table_path, "'"));
    std::stringstream text;
    text << in.rdbuf();
    MF_ASSIGN_OR_RETURN(std::vector<gemma3n::PublishedSlice> table, gemma3n::ParseSlicingTable(text.str()));
    std::vector<std::string> names;
    for (const gemma3n::PublishedSlice& row : table) {
      if (row.name == row_name) {
        return gemma3n::Slice::Create(config, ffn_granule, row.ffn_widths, row.skipped_layers, row.name);
      }
      names.push_back(absl::StrCat("'", row.name, "'"));
    }
    return absl::NotFoundError(absl::StrCat("--slice_name '", row_name, "' is not in ", table_path, "; rows: ",
                                            absl::StrJoin(names, ", ")));
  }
  MF_ASSIGN_OR_RETURN(std::vector<int64_t> skip, ParseIntList("--skip", skip_text));
  std::vector<int> skipped(skip.begin(), skip.end());
  const int kept = config.num_layers - static_cast<int>(skipped.size());
  if (widths_text.empty() && skipped.empty()) return gemma3n::Slice::Full(config);
  MF_ASSIGN_OR_RETURN(std::vector<int64_t> widths, ParseIntList("--widths", widths_text));
  if (widths.empty()) {
    // Full width on the kept layers.
    for (int l = 0; l < config.num_layers; ++l) {
      if (std::find(skipped.begin(), skipped.end(), l) == skipped.end()) widths.push_back(config.intermediate_size[l]);
    }
  } else if (widths.size() == 1 && kept > 1) {
    widths.assign(kept, widths[0]);
  }
  return gemma3n::Slice::Create(config, ffn_granule, widths, skipped, absl::StrCat("widths=", widths_text, " skip=", skip_text));
}

}  // namespace matformer::tools

#endif  // MATFORMER_TOOLS_GEMMA3N_SLICE_FLAGS_H_
