#include "core/engine.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/generate.h"
#include "core/model/random_model.h"
#include "gtest/gtest.h"
#include "tests/unit/test_model.h"

namespace matformer {
namespace {

using testing::FreshDirectory;
using testing::TinyConfig;
const std::string& kTokenizer = testing::TestTokenizer();

std::shared_ptr<const Model> LoadTinyModel(DType dtype) {
  return testing::LoadRandomModel(TinyConfig(dtype), dtype == DType::kF32 ? "engine_f32" : "engine_bf16");
}

std::vector<int32_t> Tokens(int count, int offset) {
  std::vector<int32_t> tokens;
  for (int i = 0; i < count; ++i) tokens.push_back(3 + (i * 37 + offset) % 120);
  return tokens;
}

// Logits of the last token after feeding `tokens` to a fresh sequence alone.
std::vector<float> AloneLogits(Engine& engine, const SubmodelSpec& spec, const std::vector<int32_t>& tokens) {
  auto sequence = engine.NewSequence(spec);
  StepInput input{sequence.get(), tokens};
  absl::StatusOr<std::vector<float>> logits = engine.Step({&input, 1});
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *logits : std::vector<float>();
}

float MaxAbsDifference(const float* a, const float* b, int64_t n) {
  float worst = 0.0f;
  for (int64_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

class EngineTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    model_ = LoadTinyModel(GetParam());
    ASSERT_NE(model_, nullptr);
    engine_ = *Engine::Create(model_, {.kv_blocks = 64, .kv_block_tokens = 16, .ple_cache_bytes = 1 << 20});
  }
  SubmodelSpec Spec(const std::string& name) { return *SubmodelSpec::Parse(model_->config(), name); }

  std::shared_ptr<const Model> model_;
  std::unique_ptr<Engine> engine_;
};

TEST_P(EngineTest, MixedBatchMatchesEachSequenceAlone) {
  const std::vector<std::string> specs = {"XL", "S", "S-M-XL", "M-skip-L", "L-L-S"};
  const int64_t vocab = model_->config().vocab_size;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<float>> alone;
  for (size_t i = 0; i < specs.size(); ++i) {
    prompts.push_back(Tokens(5 + 3 * static_cast<int>(i), static_cast<int>(i)));
    alone.push_back(AloneLogits(*engine_, Spec(specs[i]), prompts[i]));
  }
  std::vector<std::unique_ptr<Sequence>> sequences;
  std::vector<StepInput> batch;
  for (size_t i = 0; i < specs.size(); ++i) {
    sequences.push_back(engine_->NewSequence(Spec(specs[i])));
    batch.push_back({sequences.back().get(), prompts[i]});
  }
  absl::StatusOr<std::vector<float>> logits = engine_->Step(batch);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ(logits->size(), specs.size() * vocab);
  // Different batch sizes may take different matmul paths: equal up to f32 rounding.
  const float tolerance = GetParam() == DType::kF32 ? 1e-4f : 2e-3f;
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_LT(MaxAbsDifference(logits->data() + i * vocab, alone[i].data(), vocab), tolerance) << specs[i];
  }
  // Different submodels really do produce different outputs.
  EXPECT_GT(MaxAbsDifference(alone[0].data(), AloneLogits(*engine_, Spec("S"), prompts[0]).data(), vocab), 1e-4f);
}

TEST_P(EngineTest, ChunkedPrefillAndDecodeMatchOneShot) {
  const SubmodelSpec spec = Spec("S-M-L");
  const std::vector<int32_t> tokens = Tokens(40, 1);
  const std::vector<float> one_shot = AloneLogits(*engine_, spec, tokens);
  auto sequence = engine_->NewSequence(spec);
  std::vector<float> last;
  size_t begin = 0;
  for (size_t chunk : {17u, 16u, 1u, 1u, 5u}) {
    StepInput input{sequence.get(), absl::MakeConstSpan(tokens).subspan(begin, chunk)};
    absl::StatusOr<std::vector<float>> logits = engine_->Step({&input, 1});
    ASSERT_TRUE(logits.ok()) << logits.status();
    last = *logits;
    begin += chunk;
  }
  ASSERT_EQ(begin, tokens.size());
  EXPECT_EQ(sequence->kv.length(), 40);
  EXPECT_LT(MaxAbsDifference(last.data(), one_shot.data(), model_->config().vocab_size),
            GetParam() == DType::kF32 ? 1e-4f : 2e-3f);
}

TEST_P(EngineTest, CachedAndUncachedPleAreBitwiseEqual) {
  auto uncached = *Engine::Create(model_, {.kv_blocks = 64, .kv_block_tokens = 16, .ple_cache_bytes = 0});
  const SubmodelSpec spec = Spec("XL");
  const std::vector<int32_t> tokens = Tokens(24, 5);
  const std::vector<float> warm_up = AloneLogits(*engine_, spec, tokens);  // fills the cache
  const std::vector<float> cached = AloneLogits(*engine_, spec, tokens);
  const std::vector<float> computed = AloneLogits(*uncached, spec, tokens);
  EXPECT_GT(engine_->ple_cache().stats().hits, 0u);
  EXPECT_EQ(uncached->ple_cache().stats().hits, 0u);
  EXPECT_EQ(cached, computed);
  EXPECT_EQ(warm_up, computed);
}

// engine_bench --profile: an attached profile counts each step and charges
// every stage that ran; its time never exceeds the steps' wall time, a
// detached one is left alone, and profiling changes no result.
TEST_P(EngineTest, StageProfileChargesEveryStageOfAStep) {
  const SubmodelSpec spec = Spec("S-M-XL");
  const std::vector<int32_t> tokens = Tokens(20, 3);
  const std::vector<float> plain = AloneLogits(*engine_, spec, tokens);
  StageProfile profile;
  engine_->set_profile(&profile);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<float> profiled = AloneLogits(*engine_, spec, tokens);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  engine_->set_profile(nullptr);
  EXPECT_EQ(profiled, plain);
  EXPECT_EQ(profile.steps, 1);
  double total = 0;
  for (int i = 0; i < static_cast<int>(Stage::kCount); ++i) {
    EXPECT_GT(profile.seconds[i], 0.0) << kStageNames[i];
    total += profile.seconds[i];
  }
  EXPECT_LE(total, wall);
  const StageProfile before = profile;
  AloneLogits(*engine_, spec, tokens);
  EXPECT_EQ(profile.steps, before.steps);
  EXPECT_EQ(profile.seconds, before.seconds);
}

// --kv_dtype: narrower pools on an f32 model are smaller, really round (the
// logits move), and stay within a budget of the f32 pool after a prefill and
// decode steps: bf16, the parity test's bf16 budget (two bf16 ulps of the
// logit scale); int8, whose step is 1/254 of a head vector's largest element
// rather than 1/512 of each element, four times that.
TEST(EngineKvDtypeTest, NarrowPoolsAreSmallerAndCloseToF32) {
  const std::shared_ptr<const Model> model = LoadTinyModel(DType::kF32);
  ASSERT_NE(model, nullptr);
  auto f32 = *Engine::Create(model, {.kv_blocks = 16, .kv_block_tokens = 16, .kv_dtype = KvDtype::kF32});
  auto bf16 = *Engine::Create(model, {.kv_blocks = 16, .kv_block_tokens = 16, .kv_dtype = KvDtype::kBF16});
  auto int8 = *Engine::Create(model, {.kv_blocks = 16, .kv_block_tokens = 16, .kv_dtype = KvDtype::kInt8});
  auto automatic = *Engine::Create(model, {.kv_blocks = 16, .kv_block_tokens = 16});
  EXPECT_EQ(f32->kv_pool().dtype(), KvDtype::kF32);
  EXPECT_EQ(bf16->kv_pool().dtype(), KvDtype::kBF16);
  EXPECT_EQ(int8->kv_pool().dtype(), KvDtype::kInt8);
  EXPECT_EQ(automatic->kv_pool().dtype(), KvDtype::kF32);  // the model's dtype
  EXPECT_EQ(bf16->kv_pool().bytes() * 2, f32->kv_pool().bytes());
  EXPECT_LT(int8->kv_pool().bytes() * 3, f32->kv_pool().bytes());

  const SubmodelSpec spec = *SubmodelSpec::Parse(model->config(), "XL");
  std::vector<float> last[3];
  Engine* engines[3] = {f32.get(), bf16.get(), int8.get()};
  for (int e = 0; e < 3; ++e) {
    auto sequence = engines[e]->NewSequence(spec);
    const std::vector<int32_t> prompt = Tokens(40, 3);
    StepInput input{sequence.get(), prompt};
    ASSERT_TRUE(engines[e]->Step({&input, 1}).ok());
    for (int32_t token : {7, 11, 13}) {
      const std::vector<int32_t> one = {token};
      StepInput step{sequence.get(), one};
      absl::StatusOr<std::vector<float>> logits = engines[e]->Step({&step, 1});
      ASSERT_TRUE(logits.ok()) << logits.status();
      last[e] = *logits;
    }
  }
  float scale = 0.0f;
  for (float v : last[0]) scale = std::max(scale, std::abs(v));
  const int64_t vocab = model->config().vocab_size;
  const float bf16_difference = MaxAbsDifference(last[0].data(), last[1].data(), vocab);
  const float int8_difference = MaxAbsDifference(last[0].data(), last[2].data(), vocab);
  EXPECT_GT(bf16_difference, 0.0f);
  EXPECT_LT(bf16_difference, scale * 0x1p-7f) << "logit scale " << scale;
  EXPECT_GT(int8_difference, 0.0f);
  EXPECT_LT(int8_difference, scale * 0x1p-5f) << "logit scale " << scale;
}

TEST_P(EngineTest, KvBlocksReturnToThePoolAndExhaustionIsAnError) {
  {
    auto a = engine_->NewSequence(Spec("XL"));
    const std::vector<int32_t> tokens = Tokens(100, 0);
    StepInput input{a.get(), tokens};
    ASSERT_TRUE(engine_->Step({&input, 1}).ok());
    EXPECT_EQ(engine_->kv_pool().used_blocks(), 7);
  }
  EXPECT_EQ(engine_->kv_pool().used_blocks(), 0);

  std::vector<std::unique_ptr<Sequence>> hogs;
  const std::vector<int32_t> long_prompt = Tokens(128, 2);
  for (int i = 0; i < 8; ++i) {  // 8 x 8 blocks fill the 64-block pool
    hogs.push_back(engine_->NewSequence(Spec("S")));
    StepInput input{hogs.back().get(), long_prompt};
    ASSERT_TRUE(engine_->Step({&input, 1}).ok());
  }
  auto starved = engine_->NewSequence(Spec("S"));
  StepInput input{starved.get(), long_prompt};
  EXPECT_EQ(engine_->Step({&input, 1}).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(starved->kv.length(), 0);
  hogs.clear();
  EXPECT_EQ(engine_->kv_pool().used_blocks(), 0);
  EXPECT_TRUE(engine_->Step({&input, 1}).ok());
}

TEST_P(EngineTest, BadStepsAreClearErrors) {
  auto sequence = engine_->NewSequence(Spec("XL"));
  const std::vector<int32_t> bad_token = {5, 128};
  StepInput input{sequence.get(), bad_token};
  EXPECT_EQ(engine_->Step({&input, 1}).status().message(), "token id 128 outside [0, 128)");
  const std::vector<int32_t> too_long = Tokens(129, 0);
  input.tokens = too_long;
  EXPECT_EQ(engine_->Step({&input, 1}).status().message(),
            "sequence length 129 exceeds max_position_embeddings 128");
  input.tokens = {};
  EXPECT_EQ(engine_->Step({&input, 1}).status().message(), "step input 0: no tokens");
  const std::vector<int32_t> fine = Tokens(3, 0);
  input.tokens = fine;
  StepInput twice[] = {input, input};
  EXPECT_EQ(engine_->Step(twice).status().message(), "step input 1: sequence appears twice in one step");
  EXPECT_EQ(sequence->kv.length(), 0);
  EXPECT_TRUE(engine_->Step({&input, 1}).ok());
}

TEST_P(EngineTest, GenerationIsDeterministicPerSeed) {
  GenerateRequest request;
  request.prompt = Tokens(6, 3);
  request.max_new_tokens = 12;
  request.sampling = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 11};
  const SubmodelSpec spec = Spec("M");
  absl::StatusOr<GenerateResult> a = GenerateAlone(*engine_, spec, request);
  absl::StatusOr<GenerateResult> b = GenerateAlone(*engine_, spec, request);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->tokens, b->tokens);
  EXPECT_EQ(engine_->kv_pool().used_blocks(), 0);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, EngineTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return info.param == DType::kF32 ? "f32" : "bf16"; });

// Loading rejects a model whose file does not match its config, naming the tensor.
class BrokenModelTest : public ::testing::Test {
 protected:
  std::string WriteModel(const std::string& name) {
    const std::string directory = FreshDirectory(name);
    EXPECT_TRUE(WriteRandomModel(TinyConfig(DType::kF32), 1, directory, kTokenizer).ok());
    return directory;
  }
  // Rewrites model.safetensors of `directory` after `edit` changes the tensor list.
  void EditTensors(const std::string& directory, const std::function<void(std::vector<TensorToWrite>&)>& edit) {
    std::vector<TensorToWrite> tensors;
    {
      auto file = *SafetensorsFile::Open(directory + "/model.safetensors");
      for (const std::string& name : file->Names()) {
        const TensorView view = *file->Get(name);
        tensors.push_back({name, view.dtype, view.shape, std::vector<std::byte>(view.data, view.data + view.nbytes)});
      }
    }
    edit(tensors);
    ASSERT_TRUE(WriteSafetensors(directory + "/model.safetensors", tensors).ok());
  }
  std::string LoadError(const std::string& directory) { return std::string(Model::Load(directory).status().message()); }
};

TEST_F(BrokenModelTest, MissingTensor) {
  const std::string directory = WriteModel("missing");
  EditTensors(directory, [](auto& tensors) {
    std::erase_if(tensors, [](const TensorToWrite& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; });
  });
  EXPECT_EQ(LoadError(directory), "model.safetensors: missing tensor 'model.layers.1.mlp.up_proj.weight'");
}

TEST_F(BrokenModelTest, ExtraTensor) {
  const std::string directory = WriteModel("extra");
  EditTensors(directory, [](auto& tensors) {
    tensors.push_back({"lm_head.weight", DType::kF32, {2}, std::vector<std::byte>(8)});
  });
  EXPECT_EQ(LoadError(directory),
            "model.safetensors: unexpected tensor(s) not used by a matformer_ple model: lm_head.weight");
}

TEST_F(BrokenModelTest, WrongShape) {
  const std::string directory = WriteModel("shape");
  EditTensors(directory, [](auto& tensors) {
    for (TensorToWrite& t : tensors) {
      if (t.name == "model.layers.0.self_attn.k_proj.weight") t.shape = {64, 32};
    }
  });
  EXPECT_EQ(LoadError(directory),
            "model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' has shape [64, 32], expected [32, "
            "64] from config.json");
}

TEST_F(BrokenModelTest, WrongDtype) {
  const std::string directory = WriteModel("dtype");
  EditTensors(directory, [](auto& tensors) {
    for (TensorToWrite& t : tensors) {
      if (t.name == "model.norm.weight") {
        t.dtype = DType::kBF16;
        t.bytes.resize(t.bytes.size() / 2);
      }
    }
  });
  EXPECT_EQ(LoadError(directory), "model.safetensors: tensor 'model.norm.weight' has dtype BF16, config.json says F32");
}

TEST_F(BrokenModelTest, TokenizerLargerThanVocab) {
  ModelConfig config = TinyConfig(DType::kF32);
  config.vocab_size = 100;  // the tokenizer has 128 pieces
  const std::string directory = FreshDirectory("vocab");
  ASSERT_TRUE(WriteRandomModel(config, 1, directory, kTokenizer).ok());
  EXPECT_NE(LoadError(directory).find("128 pieces exceed the model's vocab_size 100"), std::string::npos);
}

}  // namespace
}  // namespace matformer
