// The Gemma 3n forward pass against the golden logits of the tiny random
// checkpoint (tests/data/gemma3n-tiny/GOLDEN.md): 48 tokens of prefill, then
// 8 cached decode steps, compared with an f64 re-implementation of HF's
// modeling_gemma3n.py (1e-4 absolute) and with llama.cpp (argmax).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/gemma3n/model.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/unit/npy.h"

namespace matformer::gemma3n {
namespace {

using ::matformer::testing::NpyArray;
using ::matformer::testing::ReadNpy;

const std::string& TinyDir() {
  static const std::string dir = std::string(MATFORMER_SOURCE_DIR) + "/tests/data/gemma3n-tiny";
  return dir;
}

struct Golden {
  std::vector<int32_t> tokens;
  int prefill = 0;
  NpyArray logits_hf, logits_llama, hidden_hf;
};

const Golden& LoadGolden() {
  static const Golden* const golden = [] {
    auto* g = new Golden;
    std::ifstream in(TinyDir() + "/golden_tokens.json");
    nlohmann::json json = nlohmann::json::parse(in);
    g->tokens = json["ids"].get<std::vector<int32_t>>();
    g->prefill = json["prefill"].get<int>();
    g->logits_hf = *ReadNpy(TinyDir() + "/golden_logits_hf.npy");
    g->logits_llama = *ReadNpy(TinyDir() + "/golden_logits.npy");
    g->hidden_hf = *ReadNpy(TinyDir() + "/golden_hidden_hf.npy");
    return g;
  }();
  return *golden;
}

const Model& TinyModel() {
  static const Model* const model = [] {
    auto loaded = Model::Load(TinyDir());
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return loaded.ok() ? loaded->release() : nullptr;
  }();
  return *model;
}

int Argmax(const float* row, int64_t n) { return static_cast<int>(std::max_element(row, row + n) - row); }

// Logits of every position: the prefill in one step, then one token per step.
std::vector<float> RunGoldenSequence(const Model& model, const Slice& slice, int prefill,
                                     PleCache* ple_cache = nullptr, KvDtype kv_dtype = KvDtype::kF32) {
  const Golden& g = LoadGolden();
  const std::unique_ptr<KvPool> cache_pool = model.NewKvPool(256, /*block_tokens=*/16, kv_dtype);
  KvCache cache(cache_pool.get());
  auto logits = model.Forward(slice, absl::MakeConstSpan(g.tokens).subspan(0, prefill), cache,
                              {.all_logits = true, .ple_cache = ple_cache});
  EXPECT_TRUE(logits.ok()) << logits.status();
  std::vector<float> all = *logits;
  for (size_t t = prefill; t < g.tokens.size(); ++t) {
    auto step = model.Forward(slice, absl::MakeConstSpan(g.tokens).subspan(t, 1), cache, {.ple_cache = ple_cache});
    EXPECT_TRUE(step.ok()) << step.status();
    all.insert(all.end(), step->begin(), step->end());
  }
  return all;
}

TEST(Gemma3nGolden, ConfigMatchesGoldenDescription) {
  const Config& c = TinyModel().config();
  EXPECT_EQ(c.num_layers, 25);
  EXPECT_EQ(c.first_kv_shared_layer(), 20);
  const std::vector<int> sources = *KvSourceLayers(c, {});
  for (int l = 0; l < 20; ++l) EXPECT_EQ(sources[l], l);
  for (int l = 20; l < 24; ++l) EXPECT_EQ(sources[l], 18) << l;
  EXPECT_EQ(sources[24], 19);
}

// The golden ids are <bos> and the first 55 SentencePiece ids of the text.
TEST(Gemma3nGolden, TokenizerGivesTheGoldenIds) {
  const Golden& g = LoadGolden();
  const Tokenizer* tokenizer = TinyModel().tokenizer();
  ASSERT_NE(tokenizer, nullptr);
  std::ifstream in(TinyDir() + "/golden_tokens.json");
  const std::string text = nlohmann::json::parse(in)["text"];
  auto ids = tokenizer->Encode(text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_GE(ids->size(), g.tokens.size() - 1);
  EXPECT_EQ(g.tokens[0], TinyModel().config().bos_token_id);
  EXPECT_EQ(std::vector<int32_t>(ids->begin(), ids->begin() + (g.tokens.size() - 1)),
            std::vector<int32_t>(g.tokens.begin() + 1, g.tokens.end()));
}

TEST(Gemma3nGolden, PrefillAndCachedDecodeMatchHfAndLlamaCpp) {
  const Golden& g = LoadGolden();
  const Model& model = TinyModel();
  const int64_t V = model.config().vocab_size;
  ASSERT_EQ(g.logits_hf.shape, (std::vector<int64_t>{static_cast<int64_t>(g.tokens.size()), V}));
  const std::vector<float> logits = RunGoldenSequence(model, Slice::Full(model.config()), g.prefill);
  ASSERT_EQ(logits.size(), g.logits_hf.data.size());

  double max_prefill = 0, max_decode = 0;
  int argmax_hf = 0, argmax_llama = 0;
  const int positions = static_cast<int>(g.tokens.size());
  for (int t = 0; t < positions; ++t) {
    double row_max = 0;
    for (int64_t v = 0; v < V; ++v) {
      const float got = logits[t * V + v];
      ASSERT_TRUE(std::isfinite(got)) << "position " << t;
      row_max = std::max<double>(row_max, std::fabs(got - g.logits_hf.data[t * V + v]));
    }
    (t < g.prefill ? max_prefill : max_decode) = std::max(t < g.prefill ? max_prefill : max_decode, row_max);
    EXPECT_LE(row_max, 1e-4) << "position " << t;
    const int mine = Argmax(&logits[t * V], V);
    argmax_hf += mine == Argmax(&g.logits_hf.data[t * V], V);
    argmax_llama += mine == Argmax(&g.logits_llama.data[t * V], V);
    EXPECT_EQ(mine, Argmax(&g.logits_llama.data[t * V], V)) << "position " << t;
  }
  std::printf("gemma3n-tiny vs golden_logits_hf: max |diff| prefill %.3g, decode %.3g; argmax agrees with HF %d/%d, "
              "llama.cpp %d/%d\n",
              max_prefill, max_decode, argmax_hf, positions, argmax_llama, positions);
}

// --kv_dtype on Gemma 3n (sliding and global layers, KV-shared layers): bf16
// and int8 pools round (the logits move) but stay within the engine test's
// budgets of HF's logits (logit scale x 2^-7 for bf16, x 2^-5 for int8) and
// keep HF's argmax at every position.
TEST(Gemma3nGolden, NarrowKvPoolsStayCloseToHf) {
  const Golden& g = LoadGolden();
  const Model& model = TinyModel();
  const int64_t V = model.config().vocab_size;
  float scale = 0;
  for (float x : g.logits_hf.data) scale = std::max(scale, std::fabs(x));
  for (const auto& [dtype, budget] : {std::pair{KvDtype::kBF16, 0x1p-7f}, std::pair{KvDtype::kInt8, 0x1p-5f}}) {
    const std::vector<float> logits =
        RunGoldenSequence(model, Slice::Full(model.config()), g.prefill, nullptr, dtype);
    ASSERT_EQ(logits.size(), g.logits_hf.data.size());
    double max_diff = 0;
    for (size_t i = 0; i < logits.size(); ++i) max_diff = std::max<double>(max_diff, std::fabs(logits[i] - g.logits_hf.data[i]));
    EXPECT_GT(max_diff, 1e-4) << KvDtypeName(dtype) << ": no rounding seen";
    EXPECT_LT(max_diff, scale * budget) << KvDtypeName(dtype) << ", logit scale " << scale;
    for (size_t t = 0; t < g.tokens.size(); ++t) {
      EXPECT_EQ(Argmax(&logits[t * V], V), Argmax(&g.logits_hf.data[t * V], V)) << KvDtypeName(dtype) << " position " << t;
    }
  }
}

// Chunked prefill (as a scheduler splits long prompts) through the same cache:
// chunks straddle the 16-token window and the KV-shared layers' sources.
TEST(Gemma3nGolden, ChunkedPrefillMatchesHf) {
  const Golden& g = LoadGolden();
  const Model& model = TinyModel();
  const int64_t V = model.config().vocab_size;
  const std::unique_ptr<KvPool> cache_pool = model.NewKvPool(256);
  KvCache cache(cache_pool.get());
  std::vector<float> logits;
  size_t done = 0;
  for (size_t chunk : {20, 17, 11, 1, 7}) {
    auto step = model.Forward(Slice::Full(model.config()), absl::MakeConstSpan(g.tokens).subspan(done, chunk), cache,
                              {.all_logits = true});
    ASSERT_TRUE(step.ok()) << step.status();
    logits.insert(logits.end(), step->begin(), step->end());
    done += chunk;
  }
  ASSERT_EQ(done, g.tokens.size());
  double max_diff = 0;
  for (size_t i = 0; i < logits.size(); ++i) max_diff = std::max<double>(max_diff, std::fabs(logits[i] - g.logits_hf.data[i]));
  EXPECT_LE(max_diff, 1e-4);
  EXPECT_EQ(static_cast<int64_t>(logits.size()), static_cast<int64_t>(g.tokens.size()) * V);
}

// Per-layer inputs from the shared PLE cache (filled by one slice, read by
// another that skips layers) give the logits computed without it.
TEST(Gemma3nGolden, PleCacheServesEverySlice) {
  const Golden& g = LoadGolden();
  const Model& model = TinyModel();
  const Config& c = model.config();
  PleCache ple_cache(int64_t{c.num_layers} * c.hidden_size_per_layer_input, /*max_bytes=*/64 << 20);
  const Slice full = Slice::Full(c);
  const std::vector<float> uncached = RunGoldenSequence(model, full, g.prefill);
  const std::vector<float> filling = RunGoldenSequence(model, full, g.prefill, &ple_cache);
  const uint64_t misses = ple_cache.stats().misses;
  EXPECT_EQ(ple_cache.stats().hits + misses, g.tokens.size());
  auto skipping = Slice::Create(c, 128, std::vector<int64_t>(23, 128), {2, 22});
  ASSERT_TRUE(skipping.ok()) << skipping.status();
  const std::vector<float> skipping_uncached = RunGoldenSequence(model, *skipping, g.prefill);
  const std::vector<float> skipping_cached = RunGoldenSequence(model, *skipping, g.prefill, &ple_cache);
  EXPECT_EQ(ple_cache.stats().misses, misses);  // every token was a hit the second time
  double max_diff = 0;
  for (size_t i = 0; i < uncached.size(); ++i) {
    max_diff = std::max<double>(max_diff, std::fabs(uncached[i] - filling[i]));
    max_diff = std::max<double>(max_diff, std::fabs(skipping_uncached[i] - skipping_cached[i]));
  }
  EXPECT_LE(max_diff, 1e-6);

  PleCache wrong_size(7, 1 << 20);
  const std::unique_ptr<KvPool> cache_pool = model.NewKvPool(256);
  KvCache cache(cache_pool.get());
  EXPECT_FALSE(model.Forward(full, g.tokens, cache, {.ple_cache = &wrong_size}).ok());
}

// The per-layer AltUp states of the whole sequence in one step, against the
// reference's (a failure here points at the first wrong layer).
TEST(Gemma3nGolden, LayerStatesMatchHf) {
  const Golden& g = LoadGolden();
  const Model& model = TinyModel();
  const Config& c = model.config();
  const int64_t T = static_cast<int64_t>(g.tokens.size()), d = c.hidden_size, N = c.altup_num_inputs;
  ASSERT_EQ(g.hidden_hf.shape, (std::vector<int64_t>{c.num_layers + 1, N, T, d}));
  std::vector<double> max_relative(c.num_layers + 1, -1);
  LayerObserver observer = [&](int layer, absl::Span<const float> streams) {
    const float* want = g.hidden_hf.data.data() + (layer + 1) * N * T * d;
    double worst = 0;
    for (int64_t i = 0; i < N * T; ++i) {
      double diff = 0, norm = 0;
      for (int64_t k = 0; k < d; ++k) {
        diff = std::max(diff, std::fabs(double{streams[i * d + k]} - want[i * d + k]));
        norm = std::max(norm, std::fabs(double{want[i * d + k]}));
      }
      worst = std::max(worst, diff / std::max(norm, 1e-6));
    }
    max_relative[layer + 1] = worst;
  };
  const std::unique_ptr<KvPool> cache_pool = model.NewKvPool(256);
  KvCache cache(cache_pool.get());
  ASSERT_TRUE(model.Forward(Slice::Full(c), g.tokens, cache, {.all_logits = true, .observer = &observer}).ok());
  for (int i = 0; i <= c.num_layers; ++i) {
    EXPECT_LE(max_relative[i], 1e-4) << "state " << i << " (" << (i == 0 ? "input" : "after layer ") << i - 1 << ")";
  }
}

}  // namespace
}  // namespace matformer::gemma3n
