#ifndef MATFORMER_CORE_GEMMA3N_SLICING_H_
#define MATFORMER_CORE_GEMMA3N_SLICING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/gemma3n/config.h"

namespace matformer::gemma3n {

// A MatFormer slice of one loaded Gemma 3n: an FFN width per layer (the first
// m neurons: gate/up rows, down columns) and a set of skipped layers, run off
// the same weights.
//
// Skipped layers follow Google's MatFormer Lab notebook (and mistral.rs, which
// implements it): the sliced model drops the layers, keeps the per-layer
// input (PLE) rows of the kept layers, keeps each kept layer's type, and
// lowers num_kv_shared_layers by the number of skipped layers at or after the
// first shared layer (the notebook hard-codes 20, E4B's L - num_kv_shared).
// So a kept layer stays KV-shared iff it was, and HF then reuses the last
// kept non-shared layer of its type. The notebook refuses to skip layers
// L-K-2 and L-K-1, the two K/V producers of E4B; here a slice may not skip any
// layer that is the K/V source of a kept shared layer, which is the same rule
// stated for any layer pattern, and keeps every source what it was.
// Activation sparsity: the notebook rebuilds the pattern as 0.95 on the first
// (10 - skipped sparse layers) kept layers, i.e. each kept layer keeps its own
// value; that is what the engine does (per original layer index).
// The engine runs a skipped layer as the identity on the AltUp streams.
struct Slice {
  std::string name;
  std::vector<int64_t> ffn_width;  // per layer of the full model; 0 when skipped
  std::vector<bool> skipped;
  std::vector<int> kv_source;      // per layer: the layer whose K/V it reads; -1 when skipped

  int num_kept() const;
  // Every layer at full width, nothing skipped.
  static Slice Full(const Config& config);
  // `widths` has one entry per *kept* layer, in order (the published table's
  // form); each must be a multiple of `ffn_granule` (the loaded model's slab
  // width) or the layer's full width, and at most the full width.
  static absl::StatusOr<Slice> Create(const Config& config, int64_t ffn_granule, const std::vector<int64_t>& widths,
                                      const std::vector<int>& skipped_layers, std::string name = "");
  // Parameters multiplied per token: the kept layers' weights (K/V only where
  // a layer owns them), the AltUp and PLE projections, the norms and the tied
  // LM head; not the embedding and PLE tables (rows are looked up). Google's
  // published "effective parameters" are this minus the LM head plus the
  // unused K/V of shared layers (checked against the table in the tests).
  int64_t ActiveParams(const Config& config) const;
};

// One row of the published slicing table (gemma3n-slicing-configs.csv).
struct PublishedSlice {
  std::string name;
  int num_layers = 0;              // kept layers
  double effective_params_b = 0;   // billions, as published
  double mmlu = 0;                 // fraction (62.30% -> 0.623)
  std::vector<int64_t> ffn_widths; // one per kept layer
  std::vector<int> skipped_layers;
};

// Parses the CSV (header + rows; quoted fields; widths written like
// "[2_048 * 8, ...]", skipped layers like "[20, 21]" or empty). Errors name
// the row and column.
absl::StatusOr<std::vector<PublishedSlice>> ParseSlicingTable(absl::string_view csv_text);

}  // namespace matformer::gemma3n

#endif  // MATFORMER_CORE_GEMMA3N_SLICING_H_
