// The default model's SentencePiece tokenizer on arbitrary bytes: Encode must
// either fail cleanly or give ids inside the vocabulary that Decode accepts;
// Decode of arbitrary ids must fail cleanly on ids outside it.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/model/config.h"
#include "core/model/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const matformer::Tokenizer& DefaultTokenizer() {
  static const matformer::Tokenizer* const tokenizer = [] {
    const std::string dir = MATFORMER_SOURCE_DIR "/models/default";
    absl::StatusOr<matformer::ModelConfig> config = matformer::LoadModelConfig(dir + "/config.json");
    FUZZ_CHECK(config.ok());
    auto loaded = matformer::Tokenizer::Load(dir + "/tokenizer.model", config->vocab_size);
    FUZZ_CHECK(loaded.ok());
    return loaded->release();
  }();
  return *tokenizer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const matformer::Tokenizer& tokenizer = DefaultTokenizer();
  if (size > 0 && data[0] == 0xFF) {
    // Raw ids: 4 bytes each, any value (negative, huge, in range).
    std::vector<int> ids((size - 1) / sizeof(int32_t));
    if (!ids.empty()) std::memcpy(ids.data(), data + 1, ids.size() * sizeof(int32_t));
    bool in_range = true;
    for (int id : ids) in_range = in_range && id >= 0 && id < tokenizer.vocab_size();
    absl::StatusOr<std::string> text = tokenizer.Decode(ids);
    FUZZ_CHECK(text.ok() == in_range);
    return 0;
  }
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::vector<int>> ids = tokenizer.Encode(text);
  if (!ids.ok()) return 0;
  for (int id : *ids) FUZZ_CHECK(id >= 0 && id < tokenizer.vocab_size());
  absl::StatusOr<std::string> decoded = tokenizer.Decode(*ids);
  FUZZ_CHECK(decoded.ok());
  return 0;
}
