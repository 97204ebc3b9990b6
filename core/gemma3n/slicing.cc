#include "core/gemma3n/slicing.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/util/status_macros.h"

namespace matformer::gemma3n {
namespace {

// Splits CSV text into rows of fields; fields may be double-quoted (with ""
// for a quote) and then hold commas.
absl::StatusOr<std::vector<std::vector<std::string>>> SplitCsv(absl::string_view text) {
  std::vector<std::vector<std::string>> rows(1);
  std::string field;
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (quoted) {
      if (ch == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field.push_back('"');
        ++i;
      } else if (ch == '"') {
        quoted = false;
      } else {
        field.push_back(ch);
      }
      continue;
    }
    if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      rows.back().push_back(std::move(field));
      field.clear();
    } else if (ch == '\n') {
      rows.back().push_back(std::move(field));
      field.clear();
      rows.emplace_back();
    } else if (ch != '\r') {
      field.push_back(ch);
    }
  }
  if (quoted) return absl::InvalidArgumentError("slicing table: unterminated quoted field");
  if (!field.empty() || !rows.back().empty()) rows.back().push_back(std::move(field));
  // Drop blank lines (a trailing newline leaves one).
  rows.erase(std::remove_if(rows.begin(), rows.end(),
                            [](const std::vector<std::string>& row) {
                              return row.empty() || (row.size() == 1 && absl::StripAsciiWhitespace(row[0]).empty());
                            }),
             rows.end());
  return rows;
}

// "2_048 * 8" -> 16384: a product of integers written with '_' separators.
absl::StatusOr<int64_t> ParseProduct(absl::string_view text) {
  int64_t product = 1;
  for (absl::string_view factor : absl::StrSplit(text, '*')) {
    std::string digits(absl::StripAsciiWhitespace(factor));
    digits.erase(std::remove(digits.begin(), digits.end(), '_'), digits.end());
    int64_t value = 0;
    if (digits.empty() || !absl::SimpleAtoi(digits, &value) || value < 0 || value > (int64_t{1} << 30) ||
        __builtin_mul_overflow(product, value, &product)) {
      return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a product of non-negative integers"));
    }
  }
  return product;
}

// "[a, b, c]" -> {a, b, c}; "" or "[]" -> {}.
absl::StatusOr<std::vector<int64_t>> ParseList(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  std::vector<int64_t> values;
  if (text.empty()) return values;
  if (!absl::ConsumePrefix(&text, "[") || !absl::ConsumeSuffix(&text, "]")) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a [..] list"));
  }
  if (absl::StripAsciiWhitespace(text).empty()) return values;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    MF_ASSIGN_OR_RETURN(int64_t value, ParseProduct(item));
    values.push_back(value);
  }
  return values;
}

absl::StatusOr<double> ParseNumber(absl::string_view text, bool percent) {
  text = absl::StripAsciiWhitespace(text);
  const bool has_percent = absl::ConsumeSuffix(&text, "%");
  double value = 0;
  if (!absl::SimpleAtod(text, &value)) return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a number"));
  return percent && has_percent ? value / 100.0 : value;
}

}  // namespace

int Slice::num_kept() const { return static_cast<int>(std::count(skipped.begin(), skipped.end(), false)); }

Slice Slice::Full(const Config& config) {
  Slice slice;
  slice.name = "full";
  slice.ffn_width = config.intermediate_size;
  slice.skipped.assign(config.num_layers, false);
  slice.kv_source = *KvSourceLayers(config, {});
  return slice;
}

absl::StatusOr<Slice> Slice::Create(const Config& config, int64_t ffn_granule, const std::vector<int64_t>& widths,
                                    const std::vector<int>& skipped_layers, std::string name) {
  const int num_layers = config.num_layers;
  Slice slice;
  slice.name = std::move(name);
  slice.skipped.assign(num_layers, false);
  for (int layer : skipped_layers) {
    if (layer < 0 || layer >= num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("slice ", slice.name, ": skipped layer ", layer, " outside [0, ", num_layers, ")"));
    }
    if (slice.skipped[layer]) {
      return absl::InvalidArgumentError(absl::StrCat("slice ", slice.name, ": layer ", layer, " skipped twice"));
    }
    slice.skipped[layer] = true;
  }
  const int kept = num_layers - static_cast<int>(skipped_layers.size());
  if (kept == 0) return absl::InvalidArgumentError(absl::StrCat("slice ", slice.name, ": every layer is skipped"));
  if (static_cast<int>(widths.size()) != kept) {
    return absl::InvalidArgumentError(absl::StrCat("slice ", slice.name, ": ", widths.size(),
                                                   " FFN widths for ", kept, " kept layers (", num_layers,
                                                   " layers, ", skipped_layers.size(), " skipped)"));
  }
  slice.ffn_width.assign(num_layers, 0);
  size_t next = 0;
  for (int layer = 0; layer < num_layers; ++layer) {
    if (slice.skipped[layer]) continue;
    const int64_t width = widths[next++], full = config.intermediate_size[layer];
    if (width < 1 || width > full || (width != full && width % ffn_granule != 0)) {
      return absl::InvalidArgumentError(absl::StrCat("slice ", slice.name, ": layer ", layer, " FFN width ", width,
                                                     " must be a multiple of ", ffn_granule, " up to ", full,
                                                     ", or ", full));
    }
    slice.ffn_width[layer] = width;
  }
  // A K/V producer of a kept shared layer stays: skipping it would make the
  // shared layer read some other layer's K/V, a model nobody trained.
  MF_ASSIGN_OR_RETURN(const std::vector<int> full_sources, KvSourceLayers(config, {}));
  for (int layer = 0; layer < num_layers; ++layer) {
    const int source = full_sources[layer];
    if (!slice.skipped[layer] && source != layer && slice.skipped[source]) {
      return absl::InvalidArgumentError(absl::StrCat("slice ", slice.name, ": layer ", source,
                                                     " cannot be skipped: kept layer ", layer, " reads its K/V"));
    }
  }
  MF_ASSIGN_OR_RETURN(slice.kv_source, KvSourceLayers(config, slice.skipped));
  return slice;
}

int64_t Slice::ActiveParams(const Config& c) const {
  const int64_t d = c.hidden_size, n = c.altup_num_inputs, hd = c.head_dim, ple = c.hidden_size_per_layer_input;
  int64_t total = int64_t{c.num_layers} * ple * d  // per_layer_model_projection
                  + ple + d                         // PLE norm, final norm
                  + 2 * (n - 1) * d * d             // AltUp projections in and out
                  + c.vocab_size * d;               // tied LM head
  for (int layer = 0; layer < c.num_layers; ++layer) {
    if (skipped[layer]) continue;
    const bool owns_kv = kv_source[layer] == layer;
    total += d * c.num_heads * hd * 2                                  // q, o
             + (owns_kv ? 2 * d * c.num_kv_heads * hd + hd : 0) + hd  // k, v, k_norm; q_norm
             + 3 * d * ffn_width[layer]                                // gate, up, down
             + 2 * d * c.laurel_rank                                   // LAuReL
             + 2 * d * ple                                             // per-layer gate and projection
             + n * d + n * n * n + n * n                               // router, prediction, correction
             + 9 * d;                                                  // the d-sized norms and the output scale
  }
  return total;
}

absl::StatusOr<std::vector<PublishedSlice>> ParseSlicingTable(absl::string_view csv_text) {
  MF_ASSIGN_OR_RETURN(auto rows, SplitCsv(csv_text));
  if (rows.empty()) return absl::InvalidArgumentError("slicing table: empty");
  const std::vector<std::string> expected_header = {"name", "# Layers", "# Effective Params (B)", "MMLU PT accuracy",
                                                    "FFN Hidden Dims", "Layers Skipped"};
  if (rows[0] != expected_header) {
    return absl::InvalidArgumentError(absl::StrCat("slicing table: header must be '",
                                                   absl::StrJoin(expected_header, ","), "', got '",
                                                   absl::StrJoin(rows[0], ","), "'"));
  }
  std::vector<PublishedSlice> slices;
  for (size_t r = 1; r < rows.size(); ++r) {
    const std::vector<std::string>& row = rows[r];
    const std::string where = absl::StrCat("slicing table row ", r);
    if (row.size() != expected_header.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", row.size(), " fields, expected ", expected_header.size()));
    }
    auto column_error = [&](size_t column, const absl::Status& status) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " column '", expected_header[column], "': ", status.message()));
    };
    PublishedSlice slice;
    slice.name = std::string(absl::StripAsciiWhitespace(row[0]));
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(row[1]), &slice.num_layers) || slice.num_layers < 1) {
      return column_error(1, absl::InvalidArgumentError(absl::StrCat("'", row[1], "' is not a layer count")));
    }
    auto params = ParseNumber(row[2], /*percent=*/false);
    if (!params.ok()) return column_error(2, params.status());
    slice.effective_params_b = *params;
    auto mmlu = ParseNumber(row[3], /*percent=*/true);
    if (!mmlu.ok()) return column_error(3, mmlu.status());
    slice.mmlu = *mmlu;
    auto widths = ParseList(row[4]);
    if (!widths.ok()) return column_error(4, widths.status());
    slice.ffn_widths = *widths;
    if (static_cast<int>(slice.ffn_widths.size()) != slice.num_layers) {
      return column_error(4, absl::InvalidArgumentError(absl::StrCat(slice.ffn_widths.size(), " widths for ",
                                                                     slice.num_layers, " layers")));
    }
    auto skipped = ParseList(row[5]);
    if (!skipped.ok()) return column_error(5, skipped.status());
    for (int64_t layer : *skipped) slice.skipped_layers.push_back(static_cast<int>(layer));
    slices.push_back(std::move(slice));
  }
  return slices;
}

}  // namespace matformer::gemma3n
