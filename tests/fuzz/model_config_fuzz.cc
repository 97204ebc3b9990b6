// config.json parsing on arbitrary text. An accepted config must survive the
// round trip through ModelConfigToJson unchanged (the model tools write
// configs with it, the server reads them back).
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "core/model/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<matformer::ModelConfig> config = matformer::ParseModelConfig(text);
  if (!config.ok()) {
    FUZZ_CHECK(absl::string_view(config.status().message()).substr(0, 12) == "config.json:");
    return 0;
  }
  const std::string json = matformer::ModelConfigToJson(*config);
  absl::StatusOr<matformer::ModelConfig> again = matformer::ParseModelConfig(json);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(matformer::ModelConfigToJson(*again) == json);
  return 0;
}
