#include "core/model/config.h"

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace matformer {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Json = nlohmann::json;

// gMock matchers take std::string, this Abseil's string_view is its own type.
std::string Message(const absl::Status& status) { return std::string(status.message()); }

Json ValidConfig() {
  return Json::parse(R"({
    "model_type": "matformer_ple",
    "vocab_size": 4096,
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "hidden_size_per_layer_input": 64,
    "granularities": [192, 384, 768, 1536],
    "granularity_names": ["S", "M", "L", "XL"],
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": true,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0
  })");
}

TEST(ConfigTest, ValidConfigParses) {
  auto config = ParseModelConfig(ValidConfig().dump());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->vocab_size, 4096);
  EXPECT_EQ(config->hidden_size, 384);
  EXPECT_EQ(config->intermediate_size, 1536);
  EXPECT_EQ(config->num_layers, 6);
  EXPECT_EQ(config->num_heads, 6);
  EXPECT_EQ(config->num_kv_heads, 2);
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_EQ(config->ple_dim, 64);
  EXPECT_EQ(config->granularities, (std::vector<int64_t>{192, 384, 768, 1536}));
  EXPECT_EQ(config->granularity_names, (std::vector<std::string>{"S", "M", "L", "XL"}));
  EXPECT_EQ(config->rope_theta, 10000.0);
  EXPECT_EQ(config->rms_norm_eps, 1e-6);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_EQ(config->activation, Activation::kGeluTanh);
  EXPECT_EQ(config->dtype, DType::kBF16);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_EQ(config->eos_token_id, 2);
  EXPECT_EQ(config->pad_token_id, 0);
  EXPECT_EQ(config->GranularityIndex(768), 2);
  EXPECT_EQ(config->GranularityIndex(100), -1);
}

TEST(ConfigTest, AlternativeEnumValuesAndUnknownFieldsAreAccepted) {
  Json json = ValidConfig();
  json["hidden_activation"] = "silu";
  json["torch_dtype"] = "float32";
  json["rope_theta"] = 500000;  // an integer is a valid number
  json["architectures"] = {"MatFormerForCausalLM"};
  auto config = ParseModelConfig(json.dump());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->activation, Activation::kSilu);
  EXPECT_EQ(config->dtype, DType::kF32);
  EXPECT_EQ(config->rope_theta, 500000.0);
}

TEST(ConfigTest, NumericNameEqualToItsWidthIsAccepted) {
  Json json = ValidConfig();
  json["granularity_names"] = {"192", "384", "768", "1536"};
  EXPECT_TRUE(ParseModelConfig(json.dump()).ok());
}

TEST(ConfigTest, SingleGranularity) {
  Json json = ValidConfig();
  json["granularities"] = {1536};
  json["granularity_names"] = {"XL"};
  EXPECT_TRUE(ParseModelConfig(json.dump()).ok());
}

TEST(ConfigTest, RoundTrip) {
  auto config = ParseModelConfig(ValidConfig().dump());
  ASSERT_TRUE(config.ok()) << config.status();
  config->rope_theta = 12345.678901234567;
  config->rms_norm_eps = 1.0e-5 / 3.0;
  config->activation = Activation::kSilu;
  const std::string text = ModelConfigToJson(*config);
  auto again = ParseModelConfig(text);
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << text;
  EXPECT_EQ(again->vocab_size, config->vocab_size);
  EXPECT_EQ(again->hidden_size, config->hidden_size);
  EXPECT_EQ(again->intermediate_size, config->intermediate_size);
  EXPECT_EQ(again->num_layers, config->num_layers);
  EXPECT_EQ(again->num_heads, config->num_heads);
  EXPECT_EQ(again->num_kv_heads, config->num_kv_heads);
  EXPECT_EQ(again->head_dim, config->head_dim);
  EXPECT_EQ(again->ple_dim, config->ple_dim);
  EXPECT_EQ(again->granularities, config->granularities);
  EXPECT_EQ(again->granularity_names, config->granularity_names);
  EXPECT_EQ(again->rope_theta, config->rope_theta);
  EXPECT_EQ(again->rms_norm_eps, config->rms_norm_eps);
  EXPECT_EQ(again->max_position_embeddings, config->max_position_embeddings);
  EXPECT_EQ(again->activation, config->activation);
  EXPECT_EQ(again->dtype, config->dtype);
  EXPECT_EQ(again->bos_token_id, config->bos_token_id);
  EXPECT_EQ(again->eos_token_id, config->eos_token_id);
  EXPECT_EQ(again->pad_token_id, config->pad_token_id);
  // Every field written is one the parser requires, and nothing else.
  EXPECT_EQ(Json::parse(text).size(), ValidConfig().size());
}

const char* const kAllFields[] = {
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_size_per_layer_input",
    "granularities",
    "granularity_names",
    "rope_theta",
    "rms_norm_eps",
    "max_position_embeddings",
    "hidden_activation",
    "tie_word_embeddings",
    "torch_dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
};

TEST(ConfigTest, EveryFieldIsRequired) {
  for (const char* field : kAllFields) {
    Json json = ValidConfig();
    ASSERT_EQ(json.erase(field), 1u) << field;
    auto config = ParseModelConfig(json.dump());
    ASSERT_FALSE(config.ok()) << field;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(config.status()), StartsWith("config.json: "));
    EXPECT_THAT(Message(config.status()), HasSubstr(field));
    EXPECT_THAT(Message(config.status()), HasSubstr("missing"));
  }
}

TEST(ConfigTest, EveryFieldRejectsTheWrongJsonType) {
  for (const char* field : kAllFields) {
    // An object is the wrong type for every field.
    for (const Json& wrong : {Json::object({{"a", 1}}), Json(nullptr)}) {
      Json json = ValidConfig();
      json[field] = wrong;
      auto config = ParseModelConfig(json.dump());
      ASSERT_FALSE(config.ok()) << field;
      EXPECT_THAT(Message(config.status()), StartsWith("config.json: "));
      EXPECT_THAT(Message(config.status()), HasSubstr(field));
    }
  }
}

struct BadField {
  const char* field;
  Json value;
  // Expected in the message besides the field name (the limit broken).
  const char* detail;
};

void PrintTo(const BadField& bad, std::ostream* os) { *os << bad.field << " = " << bad.value.dump(); }

class ConfigBadFieldTest : public ::testing::TestWithParam<BadField> {};

TEST_P(ConfigBadFieldTest, IsRejectedNamingTheField) {
  const BadField& bad = GetParam();
  Json json = ValidConfig();
  json[bad.field] = bad.value;
  auto config = ParseModelConfig(json.dump());
  ASSERT_FALSE(config.ok()) << bad.field << " = " << bad.value.dump();
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(config.status()), StartsWith("config.json: "));
  EXPECT_THAT(Message(config.status()), HasSubstr(bad.field));
  EXPECT_THAT(Message(config.status()), HasSubstr(bad.detail));
}

INSTANTIATE_TEST_SUITE_P(
    AllFields, ConfigBadFieldTest,
    ::testing::Values(
        BadField{"model_type", "gemma3n", "matformer_ple"}, BadField{"vocab_size", 0, "[1, 1048576]"},
        BadField{"vocab_size", 1048577, "[1, 1048576]"}, BadField{"vocab_size", -5, "[1, 1048576]"},
        BadField{"vocab_size", 4096.5, "integer"}, BadField{"vocab_size", "4096", "integer"},
        BadField{"vocab_size", Json(18446744073709551615ull), "[1, 1048576]"},
        BadField{"hidden_size", 385, "even"}, BadField{"hidden_size", 0, "[2, 65536]"},
        BadField{"hidden_size", 65538, "[2, 65536]"}, BadField{"intermediate_size", 0, "[1, 1048576]"},
        BadField{"intermediate_size", 2000000, "[1, 1048576]"}, BadField{"num_hidden_layers", 0, "[1, 256]"},
        BadField{"num_hidden_layers", 257, "[1, 256]"}, BadField{"num_attention_heads", 0, "[1, 1024]"},
        BadField{"num_attention_heads", 1025, "[1, 1024]"},
        BadField{"num_key_value_heads", 4, "divide num_attention_heads"},
        BadField{"num_key_value_heads", 12, "[1, 6]"}, BadField{"num_key_value_heads", 0, "[1, 6]"},
        BadField{"head_dim", 63, "even"}, BadField{"head_dim", 2048, "[2, 1024]"},
        BadField{"hidden_size_per_layer_input", 0, "[1, 65536]"},
        BadField{"hidden_size_per_layer_input", 65537, "[1, 65536]"},
        BadField{"max_position_embeddings", 0, "[1, 1048576]"},
        BadField{"max_position_embeddings", 1048577, "[1, 1048576]"},
        BadField{"granularities", Json::array(), "entries"},
        BadField{"granularities",
                 {192, 384, 2000, 1536},
                 "granularities[2] = 2000 exceeds intermediate_size 1536"},
        BadField{"granularities", {192, 100, 768, 1536}, "granularities[1] = 100 <= granularities[0] = 192"},
        BadField{"granularities", {192, 384, 384, 1536}, "strictly increasing"},
        BadField{"granularities", {0, 384, 768, 1536}, "granularities[0]"},
        BadField{"granularities", {-192, 384, 768, 1536}, "granularities[0]"},
        BadField{"granularities", {192, 384, 768, 1024}, "intermediate_size 1536"},
        BadField{"granularities", {192, "M", 768, 1536}, "granularities[1] must be an integer"},
        BadField{"granularity_names", {"S", "M", "L"}, "granularities has 4"},
        BadField{"granularity_names", {"S", "M", "M", "XL"}, "duplicate"},
        BadField{"granularity_names", {"S", "", "L", "XL"}, "granularity_names[1]"},
        BadField{"granularity_names", {"S", "M-2", "L", "XL"}, "'-'"},
        BadField{"granularity_names", {"S", "skip", "L", "XL"}, "reserved"},
        BadField{"granularity_names", {"S", "768", "L", "XL"}, "its width 384"},
        BadField{"granularity_names", {"S", 3, "L", "XL"}, "granularity_names[1] must be a string"},
        BadField{"rope_theta", 0.0, "> 0"}, BadField{"rope_theta", -1.0, "> 0"},
        BadField{"rope_theta", "10000", "number"}, BadField{"rms_norm_eps", 0, "> 0"},
        BadField{"rms_norm_eps", -1e-6, "> 0"}, BadField{"hidden_activation", "relu", "silu"},
        BadField{"tie_word_embeddings", false, "must be true"}, BadField{"tie_word_embeddings", 1, "boolean"},
        BadField{"torch_dtype", "float16", "bfloat16"}, BadField{"bos_token_id", 4096, "[0, 4095]"},
        BadField{"eos_token_id", -1, "[0, 4095]"}, BadField{"pad_token_id", 100000, "[0, 4095]"}));

TEST(ConfigTest, NumberBeyondDoubleRangeIsRejected) {
  // JSON has no literal for infinity; a number too large for a double is the
  // nearest a file can come, and the parser refuses it.
  std::string text = ValidConfig().dump();
  const std::string theta = "\"rope_theta\":10000.0";
  const size_t at = text.find(theta);
  ASSERT_NE(at, std::string::npos) << text;
  text.replace(at, theta.size(), "\"rope_theta\":1e999");
  auto config = ParseModelConfig(text);
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(Message(config.status()), StartsWith("config.json: not valid JSON: "));
  EXPECT_THAT(Message(config.status()), HasSubstr("1e999"));
}

TEST(ConfigTest, GarbageIsRejectedWithTheParserMessage) {
  for (const char* text : {"", "not json", "{\"vocab_size\": 4096", "{} trailing", "\xff\xfe"}) {
    auto config = ParseModelConfig(text);
    ASSERT_FALSE(config.ok()) << text;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(config.status()), StartsWith("config.json: not valid JSON: "));
    EXPECT_THAT(Message(config.status()), HasSubstr("parse error"));
  }
}

TEST(ConfigTest, TopLevelMustBeAnObject) {
  for (const char* text : {"[1, 2]", "42", "\"config\"", "null"}) {
    auto config = ParseModelConfig(text);
    ASSERT_FALSE(config.ok()) << text;
    EXPECT_THAT(Message(config.status()), HasSubstr("must be an object"));
  }
}

TEST(ConfigTest, DTypeHelpers) {
  EXPECT_EQ(DTypeName(DType::kF32), "F32");
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
}

std::string TempDir() {
  std::string pattern = ::testing::TempDir() + "config_test_XXXXXX";
  const char* dir = mkdtemp(pattern.data());
  return dir == nullptr ? "" : std::string(dir);
}

TEST(ConfigTest, LoadFromFile) {
  const std::string dir = TempDir();
  ASSERT_FALSE(dir.empty());
  const std::string path = dir + "/config.json";
  std::ofstream(path) << ValidConfig().dump(2);
  auto config = LoadModelConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_layers, 6);
}

TEST(ConfigTest, LoadErrorsNameThePath) {
  const std::string dir = TempDir();
  ASSERT_FALSE(dir.empty());

  auto missing = LoadModelConfig(dir + "/absent.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(missing.status()), HasSubstr("absent.json"));

  auto directory = LoadModelConfig(dir);
  EXPECT_EQ(directory.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(directory.status()), HasSubstr("not a regular file"));

  const std::string big = dir + "/big.json";
  std::ofstream(big) << std::string((1 << 20) + 1, ' ');
  auto too_big = LoadModelConfig(big);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(too_big.status()), HasSubstr("limit"));

  const std::string bad = dir + "/bad.json";
  Json json = ValidConfig();
  json["num_hidden_layers"] = 0;
  std::ofstream(bad) << json.dump();
  auto invalid = LoadModelConfig(bad);
  EXPECT_EQ(invalid.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(invalid.status()), HasSubstr("num_hidden_layers"));
  EXPECT_THAT(Message(invalid.status()), HasSubstr("bad.json"));
}

}  // namespace
}  // namespace matformer
