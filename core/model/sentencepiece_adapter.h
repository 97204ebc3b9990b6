#ifndef MATFORMER_CORE_MODEL_SENTENCEPIECE_ADAPTER_H_
#define MATFORMER_CORE_MODEL_SENTENCEPIECE_ADAPTER_H_

#include <memory>
#include <string>
#include <vector>

// Debian's sentencepiece_processor.h declares `absl::string_view` as an alias
// of std::string_view, which collides with Debian's Abseil (built with its own
// string_view). Only the matformer_sentencepiece module (sentencepiece_module.h
// says why it is loaded apart) includes SentencePiece; this header includes
// neither library. Errors are strings; tokenizer.cc turns them into absl::Status.
namespace matformer::spm {

class Processor {
 public:
  // Returns nullptr and sets *error on failure.
  static std::unique_ptr<Processor> Load(const std::string& path, std::string* error);
  ~Processor();

  int piece_count() const;
  bool Encode(const std::string& text, std::vector<int>* ids, std::string* error) const;
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const;

 private:
  struct Impl;
  explicit Processor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace matformer::spm

#endif  // MATFORMER_CORE_MODEL_SENTENCEPIECE_ADAPTER_H_
