#include "core/model/tokenizer.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace matformer {

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path, int64_t vocab_size) {
  std::string error;
  std::unique_ptr<spm::Processor> processor = spm::Processor::Load(path, &error);
  if (processor == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer '", path, "': ", error));
  }
  if (processor->piece_count() > vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer '", path, "': ", processor->piece_count(),
                                                   " pieces exceed the model's vocab_size ", vocab_size));
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(processor)));
}

absl::StatusOr<std::vector<int>> Tokenizer::Encode(absl::string_view text) const {
  std::vector<int> ids;
  std::string error;
  if (!processor_->Encode(std::string(text), &ids, &error)) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer: ", error));
  }
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(const std::vector<int>& ids) const {
  for (int id : ids) {
    if (id < 0 || id >= processor_->piece_count()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer: token id ", id, " outside [0, ", processor_->piece_count(), ")"));
    }
  }
  std::string text, error;
  if (!processor_->Decode(ids, &text, &error)) return absl::InternalError(absl::StrCat("tokenizer: ", error));
  return text;
}

}  // namespace matformer
