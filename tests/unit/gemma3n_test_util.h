#ifndef MATFORMER_TESTS_UNIT_GEMMA3N_TEST_UTIL_H_
#define MATFORMER_TESTS_UNIT_GEMMA3N_TEST_UTIL_H_

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/gemma3n/config.h"
#include "core/model/safetensors.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/unit/test_model.h"

// Helpers that write modified copies of the tiny Gemma 3n checkpoint
// (tests/data/gemma3n-tiny) for the loader and slicing tests.
namespace matformer::testing {

inline const std::string& Gemma3nTinyDir() {
  static const std::string dir = std::string(MATFORMER_SOURCE_DIR) + "/tests/data/gemma3n-tiny";
  return dir;
}

// Removes a test's directory when the test ends (the copies are 8 MB each).
class ScopedDirectory {
 public:
  explicit ScopedDirectory(std::string path) : path_(std::move(path)) {}
  ~ScopedDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScopedDirectory(const ScopedDirectory&) = delete;
  ScopedDirectory& operator=(const ScopedDirectory&) = delete;

 private:
  std::string path_;
};

inline nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

inline void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// Every tensor of a safetensors file, as data to write back.
inline std::vector<TensorToWrite> ReadAllTensors(const std::string& path) {
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  std::vector<TensorToWrite> tensors;
  if (!file.ok()) return tensors;
  for (const std::string& name : (*file)->Names()) {
    const TensorView view = *(*file)->Get(name);
    tensors.push_back({name, view.dtype, view.shape, std::vector<std::byte>(view.data, view.data + view.nbytes)});
  }
  return tensors;
}

// A fresh copy of the tiny checkpoint directory named `name`, with its config
// edited by `edit_config` and its tensors by `edit_tensors` (either may be null).
inline std::string WriteTinyCopy(const std::string& name, const std::function<void(nlohmann::json&)>& edit_config,
                                 const std::function<void(std::vector<TensorToWrite>&)>& edit_tensors) {
  const std::string dir = FreshDirectory(name);
  std::filesystem::create_directories(dir);
  nlohmann::json config = ReadJson(Gemma3nTinyDir() + "/config.json");
  if (edit_config) edit_config(config);
  WriteText(dir + "/config.json", config.dump(2));
  if (edit_tensors) {
    std::vector<TensorToWrite> tensors = ReadAllTensors(Gemma3nTinyDir() + "/model.safetensors");
    edit_tensors(tensors);
    const absl::Status written = WriteSafetensors(dir + "/model.safetensors", tensors);
    EXPECT_TRUE(written.ok()) << written;
  } else {
    std::filesystem::copy_file(Gemma3nTinyDir() + "/model.safetensors", dir + "/model.safetensors");
  }
  return dir;
}

// The text config of google/gemma-3n-E4B (dimensions as published).
inline gemma3n::Config E4BConfig() {
  nlohmann::json c = ReadJson(Gemma3nTinyDir() + "/config.json");
  const int L = 35;
  c["vocab_size"] = 262400;
  c["vocab_size_per_layer_input"] = 262144;
  c["hidden_size"] = 2048;
  c["num_hidden_layers"] = L;
  c["intermediate_size"] = std::vector<int>(L, 16384);
  c["num_attention_heads"] = 8;
  c["num_key_value_heads"] = 2;
  c["head_dim"] = 256;
  c["num_kv_shared_layers"] = 15;
  c["sliding_window"] = 512;
  c["max_position_embeddings"] = 32768;
  c["layer_types"] = nlohmann::json::array();
  c["activation_sparsity_pattern"] = nlohmann::json::array();
  for (int i = 0; i < L; ++i) {
    c["layer_types"].push_back((i + 1) % 5 == 0 ? "full_attention" : "sliding_attention");
    c["activation_sparsity_pattern"].push_back(i < 10 ? 0.95 : 0.0);
  }
  auto config = gemma3n::ParseConfig(c.dump());
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

}  // namespace matformer::testing

#endif  // MATFORMER_TESTS_UNIT_GEMMA3N_TEST_UTIL_H_
