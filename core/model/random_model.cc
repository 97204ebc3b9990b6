#include "core/model/random_model.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/kernels/ops.h"
#include "core/model/safetensors.h"
#include "core/model/weights.h"
#include "core/util/status_macros.h"

namespace matformer {

namespace {

constexpr float kInitStddev = 0.02f;

// xoshiro256+ seeded through splitmix64: a few ns per number, which keeps a
// 350 M parameter model to seconds; std::mt19937 + std::normal_distribution
// is several times slower.
class Random {
 public:
  explicit Random(uint64_t seed) {
    for (uint64_t& word : state_) word = SplitMix(seed);
  }

  // Uniform in (0, 1]: never 0, so log() below stays finite.
  double Uniform() { return static_cast<double>((Next() >> 11) + 1) * 0x1.0p-53; }

  // Two independent N(0, 1) samples (Box-Muller).
  void Normal2(float& a, float& b) {
    const double radius = std::sqrt(-2.0 * std::log(Uniform()));
    const double angle = 2.0 * std::numbers::pi * Uniform();
    a = static_cast<float>(radius * std::cos(angle));
    b = static_cast<float>(radius * std::sin(angle));
  }

 private:
  static uint64_t SplitMix(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  uint64_t Next() {
    const uint64_t result = state_[0] + state_[3];
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = std::rotl(state_[3], 45);
    return result;
  }

  uint64_t state_[4];
};

TensorToWrite MakeTensor(const ExpectedTensor& spec, DType dtype, Random& random) {
  int64_t count = 1;
  for (int64_t dim : spec.shape) count *= dim;
  std::vector<float> values(count, 1.0f);
  if (!spec.is_norm) {
    for (int64_t i = 0; i + 1 < count; i += 2) random.Normal2(values[i], values[i + 1]);
    if (count % 2 == 1) {
      float unused;
      random.Normal2(values[count - 1], unused);
    }
    for (float& value : values) value *= kInitStddev;
  }
  TensorToWrite tensor{spec.name, dtype, spec.shape, std::vector<std::byte>(count * DTypeSize(dtype))};
  if (dtype == DType::kF32) {
    std::memcpy(tensor.bytes.data(), values.data(), tensor.bytes.size());
  } else {
    for (int64_t i = 0; i < count; ++i) {
      const uint16_t bits = F32ToBf16(values[i]);
      std::memcpy(tensor.bytes.data() + 2 * i, &bits, sizeof(bits));
    }
  }
  return tensor;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr)
    return absl::InternalError(absl::StrCat("cannot create '", path, "': ", std::strerror(errno)));
  const bool written = std::fwrite(text.data(), 1, text.size(), file) == text.size();
  if (std::fclose(file) != 0 || !written) {
    return absl::InternalError(absl::StrCat("cannot write '", path, "'"));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t StoredParameterCount(const ModelConfig& config) {
  int64_t count = 0;
  for (const ExpectedTensor& spec : ExpectedTensors(config)) {
    int64_t elements = 1;
    for (int64_t dim : spec.shape) elements *= dim;
    count += elements;
  }
  return count;
}

absl::Status WriteRandomModel(const ModelConfig& config, uint64_t seed, const std::string& directory,
                              const std::string& tokenizer_path) {
  // Callers may build the config by hand; writing a model the engine would
  // refuse to load helps no one.
  const std::string config_json = ModelConfigToJson(config);
  MF_RETURN_IF_ERROR(ParseModelConfig(config_json).status());

  const std::filesystem::path out = directory;
  std::error_code error;
  std::filesystem::create_directories(out, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot create '", directory, "': ", error.message()));
  }
  // Copied by content rather than with copy_file, which would also copy a
  // read-only mode and then fail to overwrite it on the next run.
  std::ifstream tokenizer_in(tokenizer_path, std::ios::binary);
  std::ostringstream tokenizer_bytes;
  tokenizer_bytes << tokenizer_in.rdbuf();
  if (!tokenizer_in) return absl::InternalError(absl::StrCat("cannot read '", tokenizer_path, "'"));
  MF_RETURN_IF_ERROR(WriteFile(out / "tokenizer.model", tokenizer_bytes.str()));
  MF_RETURN_IF_ERROR(WriteFile(out / "config.json", config_json));

  Random random(seed);
  std::vector<TensorToWrite> tensors;
  for (const ExpectedTensor& spec : ExpectedTensors(config)) {
    tensors.push_back(MakeTensor(spec, config.dtype, random));
  }
  return WriteSafetensors(out / "model.safetensors", tensors);
}

}  // namespace matformer
