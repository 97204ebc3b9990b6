// The matformer_sentencepiece module: SentencePiece behind the Backend
// interface (see sentencepiece_module.h for why it is a separate module).
#include "core/model/sentencepiece_module.h"

#include <memory>

#include <sentencepiece_processor.h>

namespace matformer::spm {
namespace {

class SentencePieceBackend : public Backend {
 public:
  bool Load(const std::string& path, std::string* error) {
    const auto status = processor_.Load(path);
    if (!status.ok()) *error = status.ToString();
    return status.ok();
  }
  int piece_count() const override { return processor_.GetPieceSize(); }
  bool Encode(const std::string& text, std::vector<int>* ids, std::string* error) const override {
    const auto status = processor_.Encode(text, ids);
    if (!status.ok()) *error = status.ToString();
    return status.ok();
  }
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const override {
    const auto status = processor_.Decode(ids, text);
    if (!status.ok()) *error = status.ToString();
    return status.ok();
  }

 private:
  sentencepiece::SentencePieceProcessor processor_;
};

}  // namespace
}  // namespace matformer::spm

extern "C" __attribute__((visibility("default"))) matformer::spm::Backend* matformer_spm_load_backend(
    const std::string& path, std::string* error) {
  auto backend = std::make_unique<matformer::spm::SentencePieceBackend>();
  if (!backend->Load(path, error)) return nullptr;
  return backend.release();
}
