#ifndef MATFORMER_CORE_MODEL_TOKENIZER_H_
#define MATFORMER_CORE_MODEL_TOKENIZER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/model/sentencepiece_adapter.h"

namespace matformer {

// SentencePiece tokenizer of a model directory. Thread-safe for concurrent
// Encode/Decode (the processor is immutable after loading).
class Tokenizer {
 public:
  // Fails if the file is missing, not a SentencePiece model, or has more
  // pieces than `vocab_size`.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path, int64_t vocab_size);

  absl::StatusOr<std::vector<int>> Encode(absl::string_view text) const;
  // Fails on ids outside the tokenizer's pieces.
  absl::StatusOr<std::string> Decode(const std::vector<int>& ids) const;
  int vocab_size() const { return processor_->piece_count(); }

 private:
  explicit Tokenizer(std::unique_ptr<spm::Processor> processor) : processor_(std::move(processor)) {}
  std::unique_ptr<spm::Processor> processor_;
};

}  // namespace matformer

#endif  // MATFORMER_CORE_MODEL_TOKENIZER_H_
