// Loading Hugging Face Gemma 3n checkpoints: the layouts that must load (single
// file, shards with an index and untouched vision/audio shards, multimodal and
// legacy configs, bf16) and hand-broken copies of the tiny checkpoint that must
// fail with an error naming the field or tensor.
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "core/gemma3n/model.h"
#include "core/kernels/ops.h"
#include "gtest/gtest.h"
#include "tests/unit/gemma3n_test_util.h"

namespace matformer::gemma3n {
namespace {

using ::matformer::testing::FreshDirectory;
using ::matformer::testing::ScopedDirectory;
using ::matformer::testing::Gemma3nTinyDir;
using ::matformer::testing::ReadAllTensors;
using ::matformer::testing::ReadJson;
using ::matformer::testing::WriteText;
using ::matformer::testing::WriteTinyCopy;
using Json = nlohmann::json;

constexpr char kPrefix[] = "model.language_model.";
const std::vector<int32_t> kTokens = {2, 68, 20, 13, 18, 55, 44, 57, 50, 55, 8, 11, 44, 73, 61, 51, 54, 53, 45, 42};

std::vector<float> Logits(const Model& model) {
  const std::unique_ptr<KvPool> cache_pool = model.NewKvPool(256);
  KvCache cache(cache_pool.get());
  auto logits = model.Forward(Slice::Full(model.config()), kTokens, cache, {.all_logits = true});
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *logits : std::vector<float>{};
}

const std::vector<float>& ReferenceLogits() {
  static const std::vector<float>* const logits = [] {
    auto model = Model::Load(Gemma3nTinyDir());
    EXPECT_TRUE(model.ok()) << model.status();
    return new std::vector<float>(Logits(**model));
  }();
  return *logits;
}

bool InMapping(const TensorView& tensor, const Checkpoint& checkpoint) {
  for (size_t i = 0; i < checkpoint.num_files(); ++i) {
    const MappedFile& file = checkpoint.file(i).file();
    if (tensor.data >= file.data() && tensor.data + tensor.nbytes <= file.data() + file.size()) return true;
  }
  return false;
}

TEST(Gemma3nLoader, TablesStayInTheMapping) {
  auto model = Model::Load(Gemma3nTinyDir());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->checkpoint().prefix(), kPrefix);
  EXPECT_TRUE(InMapping((*model)->weights().per_layer_embed, (*model)->checkpoint()));
  EXPECT_TRUE(InMapping((*model)->weights().embed, (*model)->checkpoint()));
  EXPECT_EQ((*model)->weights().per_layer_embed.shape, (std::vector<int64_t>{128, 25 * 256}));
}

// Two shards with an index, plus a third "vision" shard that is not even a
// safetensors file: it must never be opened.
TEST(Gemma3nLoader, ShardedCheckpointIgnoresVisionAndAudioShards) {
  const std::string dir = FreshDirectory("gemma3n_sharded");
  const ScopedDirectory cleanup(dir);
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(Gemma3nTinyDir() + "/config.json", dir + "/config.json");
  std::vector<TensorToWrite> tensors = ReadAllTensors(Gemma3nTinyDir() + "/model.safetensors");
  const size_t half = tensors.size() / 2;
  std::vector<TensorToWrite> first(tensors.begin(), tensors.begin() + half), second(tensors.begin() + half, tensors.end());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00001-of-00003.safetensors", first).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00002-of-00003.safetensors", second).ok());
  WriteText(dir + "/model-00003-of-00003.safetensors", "not a safetensors file");
  Json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", Json::object()}};
  for (size_t i = 0; i < tensors.size(); ++i) {
    index["weight_map"][tensors[i].name] = i < half ? "model-00001-of-00003.safetensors" : "model-00002-of-00003.safetensors";
  }
  index["weight_map"]["model.vision_tower.timm_model.conv_stem.conv.weight"] = "model-00003-of-00003.safetensors";
  index["weight_map"]["model.audio_tower.conformer.0.norm.weight"] = "model-00003-of-00003.safetensors";
  WriteText(dir + "/model.safetensors.index.json", index.dump());

  auto model = Model::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->checkpoint().num_files(), 2u);
  EXPECT_EQ(Logits(**model), ReferenceLogits());

  // The index is the authority: a tensor it places in the wrong shard is an error.
  index["weight_map"][tensors[0].name] = "model-00002-of-00003.safetensors";
  WriteText(dir + "/model.safetensors.index.json", index.dump());
  auto misplaced = Model::Load(dir);
  ASSERT_FALSE(misplaced.ok());
  EXPECT_TRUE(absl::StrContains(misplaced.status().message(), tensors[0].name)) << misplaced.status();

  index["weight_map"][tensors[0].name] = "../model-00001-of-00003.safetensors";
  WriteText(dir + "/model.safetensors.index.json", index.dump());
  auto escaping = Model::Load(dir);
  ASSERT_FALSE(escaping.ok());
  EXPECT_TRUE(absl::StrContains(escaping.status().message(), "is not a file name")) << escaping.status();

  index["weight_map"][tensors[0].name] = "model-00009-of-00009.safetensors";
  WriteText(dir + "/model.safetensors.index.json", index.dump());
  auto missing_shard = Model::Load(dir);
  ASSERT_FALSE(missing_shard.ok());
  EXPECT_TRUE(absl::StrContains(missing_shard.status().message(), "model-00009-of-00009.safetensors"))
      << missing_shard.status();

  // An index that is there but cannot be read is an error naming it, not a
  // single-file checkpoint.
  std::filesystem::remove(dir + "/model.safetensors.index.json");
  std::filesystem::create_directory(dir + "/model.safetensors.index.json");
  auto unreadable_index = Model::Load(dir);
  ASSERT_FALSE(unreadable_index.ok());
  EXPECT_TRUE(
      absl::StrContains(unreadable_index.status().message(), "model.safetensors.index.json': not a regular file"))
      << unreadable_index.status();
}

// The published multimodal config.json nests the text config and (in 2025
// releases) gives the rope thetas as rope_theta / rope_local_base_freq.
TEST(Gemma3nLoader, MultimodalConfigWithLegacyRopeFields) {
  const std::string dir = WriteTinyCopy(
      "gemma3n_multimodal",
      [](Json& config) {
        Json text = config;
        text.erase("rope_parameters");
        text["rope_theta"] = 1000000.0;
        text["rope_local_base_freq"] = 10000.0;
        text["rope_scaling"] = nullptr;
        text["eos_token_id"] = {1, 106 % 128};
        config = {{"model_type", "gemma3n"},
                  {"architectures", {"Gemma3nForConditionalGeneration"}},
                  {"text_config", text},
                  {"vision_config", {{"model_type", "gemma3n_vision"}}},
                  {"audio_config", {{"model_type", "gemma3n_audio"}}}};
      },
      nullptr);
  const ScopedDirectory cleanup(dir);
  auto model = Model::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->config().rope_theta_full, 1e6);
  EXPECT_EQ((*model)->config().rope_theta_sliding, 1e4);
  EXPECT_EQ((*model)->config().eos_token_ids, (std::vector<int>{1, 106 % 128}));
  EXPECT_EQ(Logits(**model), ReferenceLogits());
}

// bf16 weights (the published dtype): the engine rounds matmul inputs to
// bf16 too, so the logits move, but only by rounding.
TEST(Gemma3nLoader, Bf16Checkpoint) {
  const std::string dir = WriteTinyCopy("gemma3n_bf16", [](Json& config) { config["dtype"] = "bfloat16"; },
                                        [](std::vector<TensorToWrite>& tensors) {
                                          for (TensorToWrite& t : tensors) {
                                            std::vector<std::byte> bytes(t.bytes.size() / 2);
                                            for (size_t i = 0; i < bytes.size() / 2; ++i) {
                                              float value;
                                              std::memcpy(&value, &t.bytes[4 * i], 4);
                                              const uint16_t bits = F32ToBf16(value);
                                              std::memcpy(&bytes[2 * i], &bits, 2);
                                            }
                                            t.dtype = DType::kBF16;
                                            t.bytes = std::move(bytes);
                                          }
                                        });
  const ScopedDirectory cleanup(dir);
  auto model = Model::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<float> logits = Logits(**model);
  const std::vector<float>& reference = ReferenceLogits();
  ASSERT_EQ(logits.size(), reference.size());
  double max_diff = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    ASSERT_TRUE(std::isfinite(logits[i]));
    max_diff = std::max<double>(max_diff, std::fabs(logits[i] - reference[i]));
  }
  std::printf("bf16 copy vs f32 tiny checkpoint: max |logit diff| %.3g\n", max_diff);
  // Bf16 rounding (2^-9 relative) through 25 layers: measured 0.19 (logit std 2.2);
  // a wrong tensor would move them by several units.
  EXPECT_GT(max_diff, 0.0);
  EXPECT_LT(max_diff, 1.0);
}

struct BrokenCase {
  std::string name;
  std::function<void(Json&)> edit_config;
  std::function<void(std::vector<TensorToWrite>&)> edit_tensors;
  std::string expected;  // substring of the error message
};

TensorToWrite* Find(std::vector<TensorToWrite>& tensors, const std::string& name) {
  for (TensorToWrite& t : tensors) {
    if (t.name == std::string(kPrefix) + name) return &t;
  }
  ADD_FAILURE() << "no tensor " << name;
  static TensorToWrite dummy;
  return &dummy;
}

std::vector<BrokenCase> BrokenCases() {
  return {
      {"missing_tensor", nullptr,
       [](std::vector<TensorToWrite>& t) {
         t.erase(std::find_if(t.begin(), t.end(), [](const TensorToWrite& x) {
           return x.name == "model.language_model.layers.3.mlp.up_proj.weight";
         }));
       },
       "missing tensor 'model.language_model.layers.3.mlp.up_proj.weight'"},
      {"wrong_shape", nullptr,
       [](std::vector<TensorToWrite>& t) { Find(t, "layers.7.altup.prediction_coefs.weight")->shape = {4, 16}; },
       "'model.language_model.layers.7.altup.prediction_coefs.weight' has shape [4, 16], expected [16, 4]"},
      {"unexpected_tensor", nullptr,
       [](std::vector<TensorToWrite>& t) {
         TensorToWrite extra = *Find(t, "layers.0.self_attn.q_norm.weight");
         extra.name = "model.language_model.layers.0.self_attn.v_norm.weight";
         t.push_back(extra);
       },
       "unexpected tensor 'model.language_model.layers.0.self_attn.v_norm.weight'"},
      {"no_language_model", nullptr,
       [](std::vector<TensorToWrite>& t) {
         for (TensorToWrite& x : t) x.name = "model.vision_tower." + x.name.substr(21);
       },
       "no Gemma 3n language-model tensors"},
      {"ple_width", [](Json& c) { c["hidden_size_per_layer_input"] = 128; }, nullptr,
       "'model.language_model.embed_tokens_per_layer.weight' has shape [128, 6400], expected [128, 3200]"},
      {"intermediate_size_value", [](Json& c) { c["intermediate_size"] = 256; }, nullptr,
       "'model.language_model.layers.0.mlp.gate_proj.weight' has shape [128, 32], expected [256, 32]"},
      {"intermediate_size_length", [](Json& c) { c["intermediate_size"] = std::vector<int>(24, 128); }, nullptr,
       "intermediate_size must be an array of 25 entries"},
      {"head_dim_odd", [](Json& c) { c["head_dim"] = 31; }, nullptr, "head_dim must be even"},
      {"kv_heads", [](Json& c) { c["num_key_value_heads"] = 3; }, nullptr, "num_key_value_heads"},
      {"model_type", [](Json& c) { c["model_type"] = "gemma3_text"; }, nullptr,
       "model_type is 'gemma3_text', expected 'gemma3n_text'"},
      {"layer_types_length", [](Json& c) { c["layer_types"].erase(0); }, nullptr,
       "layer_types must be an array of 25 entries"},
      {"layer_type_name", [](Json& c) { c["layer_types"][3] = "local"; }, nullptr, "layer_types[3]"},
      {"sparsity_missing", [](Json& c) { c.erase("activation_sparsity_pattern"); }, nullptr,
       "activation_sparsity_pattern is missing"},
      {"sparsity_one", [](Json& c) { c["activation_sparsity_pattern"][2] = 1.0; }, nullptr,
       "activation_sparsity_pattern[2]"},
      {"rope_sliding_missing", [](Json& c) { c["rope_parameters"].erase("sliding_attention"); }, nullptr,
       "rope_parameters.sliding_attention is missing"},
      {"rope_type", [](Json& c) { c["rope_parameters"]["full_attention"]["rope_type"] = "yarn"; }, nullptr,
       "rope_parameters.full_attention.rope_type 'yarn' is not supported"},
      {"kv_shared_all", [](Json& c) { c["num_kv_shared_layers"] = 25; }, nullptr, "num_kv_shared_layers"},
      {"kv_shared_without_source",
       [](Json& c) {
         for (int i = 0; i < 25; ++i) c["layer_types"][i] = i == 24 ? "full_attention" : "sliding_attention";
       },
       nullptr, "layer 24 shares K/V (num_kv_shared_layers = 5) but no earlier non-shared layer"},
      {"not_json", [](Json& c) { c = "{"; }, nullptr, "must hold a JSON object"},
  };
}

TEST(Gemma3nLoader, BrokenCopiesFailWithClearErrors) {
  for (const BrokenCase& broken : BrokenCases()) {
    SCOPED_TRACE(broken.name);
    const std::string dir = WriteTinyCopy("gemma3n_broken_" + broken.name, broken.edit_config, broken.edit_tensors);
    const ScopedDirectory cleanup(dir);
    auto model = Model::Load(dir);
    ASSERT_FALSE(model.ok());
    EXPECT_TRUE(absl::StrContains(model.status().message(), broken.expected))
        << "got: " << model.status() << "\nexpected to contain: " << broken.expected;
  }
}

TEST(Gemma3nLoader, TruncatedAndMissingFiles) {
  const std::string dir = WriteTinyCopy("gemma3n_truncated", nullptr, nullptr);
  const ScopedDirectory cleanup(dir);
  std::filesystem::resize_file(dir + "/model.safetensors", 4000000);
  auto truncated = Model::Load(dir);
  ASSERT_FALSE(truncated.ok());
  EXPECT_TRUE(absl::StrContains(truncated.status().message(), "model.safetensors")) << truncated.status();

  std::filesystem::remove(dir + "/model.safetensors");
  auto missing = Model::Load(dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "model.safetensors")) << missing.status();

  auto no_config = Model::Load(dir + "/nowhere");
  ASSERT_FALSE(no_config.ok());
  EXPECT_TRUE(absl::StrContains(no_config.status().message(), "config.json")) << no_config.status();
}

TEST(Gemma3nLoader, ForwardRejectsBadInputs) {
  auto loaded = Model::Load(Gemma3nTinyDir());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Model& model = **loaded;
  const Slice full = Slice::Full(model.config());
  const std::unique_ptr<KvPool> cache_pool = model.NewKvPool(256);
  KvCache cache(cache_pool.get());
  EXPECT_FALSE(model.Forward(full, {}, cache).ok());
  const std::vector<int32_t> out_of_range = {2, 128};
  EXPECT_FALSE(model.Forward(full, out_of_range, cache).ok());
  const std::vector<int32_t> negative = {-1};
  EXPECT_FALSE(model.Forward(full, negative, cache).ok());
  EXPECT_EQ(cache.length(), 0);

  // A cache filled under one set of skipped layers cannot continue under another.
  ASSERT_TRUE(model.Forward(full, kTokens, cache).ok());
  auto skipping = model.MakeSlice(std::vector<int64_t>(23, 128), {5, 6});
  ASSERT_TRUE(skipping.ok()) << skipping.status();
  const std::vector<int32_t> one = {44};
  EXPECT_EQ(model.Forward(*skipping, one, cache).status().code(), absl::StatusCode::kFailedPrecondition);

  // A slice whose K/V sources do not fit the model (e.g. made for another config).
  Slice bogus = full;
  bogus.kv_source[22] = 22;
  const std::unique_ptr<KvPool> bogus_cache_pool = model.NewKvPool(256);
  KvCache bogus_cache(bogus_cache_pool.get());
  EXPECT_FALSE(model.Forward(bogus, one, bogus_cache).ok());
  EXPECT_EQ(bogus_cache.length(), 0);

  const std::unique_ptr<KvPool> long_cache_pool = model.NewKvPool(256);

  KvCache long_cache(long_cache_pool.get());
  const std::vector<int32_t> too_long(2049, 44);
  EXPECT_EQ(model.Forward(full, too_long, long_cache).status().code(), absl::StatusCode::kOutOfRange);

  // A pool too small for the prompt: ResourceExhausted, nothing stored, and
  // the blocks go back to the pool with the cache.
  const std::unique_ptr<KvPool> small_pool = model.NewKvPool(1, 16);
  {
    KvCache short_cache(small_pool.get());
    EXPECT_EQ(model.Forward(full, kTokens, short_cache).status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(short_cache.length(), 0);
    ASSERT_TRUE(model.Forward(full, absl::MakeConstSpan(kTokens).subspan(0, 16), short_cache).ok());
    EXPECT_EQ(small_pool->used_blocks(), 1);
  }
  EXPECT_EQ(small_pool->used_blocks(), 0);
  // A pool made for another geometry is refused before anything is written.
  KvPool foreign_pool(model.num_kv_layers(), model.config().num_kv_heads, model.config().head_dim + 2, 16, 4);
  KvCache foreign_cache(&foreign_pool);
  EXPECT_EQ(model.Forward(full, one, foreign_cache).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace matformer::gemma3n
