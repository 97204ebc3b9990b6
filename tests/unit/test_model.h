#ifndef MATFORMER_TESTS_UNIT_TEST_MODEL_H_
#define MATFORMER_TESTS_UNIT_TEST_MODEL_H_

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "core/model/random_model.h"
#include "core/model/weights.h"
#include "gtest/gtest.h"

namespace matformer::testing {

// A tiny model config whose vocabulary is the test tokenizer's 128 pieces.
inline ModelConfig TinyConfig(DType dtype) {
  ModelConfig c;
  c.vocab_size = 128;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 3;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.ple_dim = 8;
  c.granularities = {16, 32, 64, 128};
  c.granularity_names = {"S", "M", "L", "XL"};
  c.max_position_embeddings = 128;
  c.dtype = dtype;
  c.bos_token_id = 2;
  c.eos_token_id = 1;
  c.pad_token_id = 0;
  return c;
}

inline const std::string& TestTokenizer() {
  static const std::string path = std::string(MATFORMER_SOURCE_DIR) + "/tests/data/gemma3n-tiny/tokenizer.model";
  return path;
}

// Unique per process: ctest runs each test case of a binary as its own process, in parallel.
inline std::string FreshDirectory(const std::string& name) {
  const std::string directory = ::testing::TempDir() + "/matformer_" + name + "_" + std::to_string(getpid());
  std::filesystem::remove_all(directory);
  return directory;
}

// Writes a random model of `config` into a fresh directory and loads it.
inline std::shared_ptr<const Model> LoadRandomModel(const ModelConfig& config, const std::string& name) {
  const std::string directory = FreshDirectory(name);
  const absl::Status written = WriteRandomModel(config, /*seed=*/7, directory, TestTokenizer());
  EXPECT_TRUE(written.ok()) << written;
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(directory);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::shared_ptr<const Model>(*std::move(model)) : nullptr;
}

}  // namespace matformer::testing

#endif  // MATFORMER_TESTS_UNIT_TEST_MODEL_H_
