#ifndef MATFORMER_CORE_GEMMA3N_SLICER_H_
#define MATFORMER_CORE_GEMMA3N_SLICER_H_

#include <string>

#include "absl/status/status.h"
#include "core/gemma3n/slicing.h"

namespace matformer::gemma3n {

// Writes the text model of the checkpoint in `source_dir`, sliced by `slice`,
// as a standalone text-only checkpoint in `out_dir` (created): config.json
// (Gemma3nForCausalLM) and one model.safetensors, in the source's dtypes, plus
// the tokenizer files that exist. This is what Google's MatFormer Lab
// notebook produces: skipped layers removed and the rest renumbered, FFN
// tensors cut to their first `width` neurons, the PLE table and projection
// cut to the kept layers, num_kv_shared_layers lowered by the skipped shared
// layers, layer_types and activation_sparsity_pattern of the kept layers.
// Fails if the sliced config would not reproduce the slice's K/V sources.
// Holds the output tensors in memory while writing.
absl::Status WriteSlicedCheckpoint(const std::string& source_dir, const Slice& slice, const std::string& out_dir);

}  // namespace matformer::gemma3n

#endif  // MATFORMER_CORE_GEMMA3N_SLICER_H_
