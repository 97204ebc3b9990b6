// Elastic Gemma 3n: the published MatFormer slicing table as slice specs of
// an E4B-shaped config, and slices of the tiny checkpoint run off its one set
// of weights (full width, narrower FFNs, skipped layers) against the same
// slice written as a separate checkpoint by the offline slicer.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "core/gemma3n/model.h"
#include "core/gemma3n/slicer.h"
#include "core/gemma3n/slicing.h"
#include "gtest/gtest.h"
#include "tests/unit/gemma3n_test_util.h"
#include "tests/unit/npy.h"

namespace matformer::gemma3n {
namespace {

using ::matformer::testing::FreshDirectory;
using ::matformer::testing::ScopedDirectory;
using ::matformer::testing::Gemma3nTinyDir;
using ::matformer::testing::E4BConfig;
using ::matformer::testing::ReadJson;
using Json = nlohmann::json;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<PublishedSlice> PublishedTable() {
  auto table = ParseSlicingTable(ReadFile(std::string(MATFORMER_SOURCE_DIR) + "/tests/data/gemma3n-slicing-configs.csv"));
  EXPECT_TRUE(table.ok()) << table.status();
  return table.ok() ? *table : std::vector<PublishedSlice>{};
}


TEST(Gemma3nSlicingTable, ParsesThePublishedTable) {
  const std::vector<PublishedSlice> table = PublishedTable();
  ASSERT_EQ(table.size(), 16u);
  EXPECT_EQ(table[0].name, "Main model");
  EXPECT_EQ(table[0].num_layers, 35);
  EXPECT_EQ(table[0].ffn_widths, std::vector<int64_t>(35, 16384));
  EXPECT_TRUE(table[0].skipped_layers.empty());
  EXPECT_DOUBLE_EQ(table[0].effective_params_b, 3.98);
  EXPECT_NEAR(table[0].mmlu, 0.623, 1e-12);
  EXPECT_EQ(table[1].name, "Config for official E2B Model");
  EXPECT_EQ(table[1].ffn_widths, std::vector<int64_t>(30, 8192));
  EXPECT_EQ(table[1].skipped_layers, (std::vector<int>{20, 21, 22, 23, 24}));
  EXPECT_EQ(table[10].name, "Config for E2.49B (block-level)");
  for (int l = 0; l < 35; ++l) EXPECT_EQ(table[10].ffn_widths[l], l >= 20 && l < 25 ? 16384 : 8192) << l;
}

TEST(Gemma3nSlicingTable, MalformedTablesFailNamingTheRow) {
  const std::string header =
      "name,# Layers,# Effective Params (B),MMLU PT accuracy,FFN Hidden Dims,Layers Skipped\n";
  struct Case {
    std::string csv, expected;
  } cases[] = {
      {"name,layers\n", "header must be"},
      {header + "A,2,1.0,50%,\"[2_048 * 4]\",\n", "row 1 column 'FFN Hidden Dims': 1 widths for 2 layers"},
      {header + "A,1,1.0,50%,\"[2_048 * x]\",\n", "row 1 column 'FFN Hidden Dims'"},
      {header + "A,1,abc,50%,\"[8]\",\n", "row 1 column '# Effective Params (B)'"},
      {header + "A,1,1.0,50%,\"[8]\",\"[1, 2\"\n", "row 1 column 'Layers Skipped'"},
      {header + "A,1,1.0,50%,\"[8]\n", "unterminated"},
      {header + "A,1,1.0\n", "row 1: 3 fields, expected 6"},
  };
  for (const Case& c : cases) {
    auto table = ParseSlicingTable(c.csv);
    ASSERT_FALSE(table.ok()) << c.csv;
    EXPECT_TRUE(absl::StrContains(table.status().message(), c.expected)) << table.status() << " vs " << c.expected;
  }
}

// Every published row is a valid slice of E4B; KV sources stay layers 18
// (sliding) and 19 (full); effective parameters match the published column.
TEST(Gemma3nSlicingTable, PublishedRowsAreSlicesOfE4B) {
  const Config e4b = E4BConfig();
  for (const PublishedSlice& row : PublishedTable()) {
    SCOPED_TRACE(row.name);
    auto slice = Slice::Create(e4b, 2048, row.ffn_widths, row.skipped_layers, row.name);
    ASSERT_TRUE(slice.ok()) << slice.status();
    EXPECT_EQ(slice->num_kept(), row.num_layers);
    for (int l = 0; l < 35; ++l) {
      if (slice->skipped[l]) continue;
      const int expected_source = l < 20 ? l : (e4b.layer_types[l] == LayerType::kFull ? 19 : 18);
      EXPECT_EQ(slice->kv_source[l], expected_source) << "layer " << l;
    }
    // The published "effective parameters" count every weight of the kept
    // decoder layers (the unused K/V of shared layers too) plus the AltUp and
    // PLE projections, but not the embeddings or the tied LM head. Measured:
    // the published values are 0.001..0.019 B above this count (rounding up).
    const int64_t unused_kv = 2 * e4b.hidden_size * e4b.num_kv_heads * e4b.head_dim + e4b.head_dim;
    int64_t published_definition = slice->ActiveParams(e4b) - e4b.vocab_size * e4b.hidden_size;
    for (int l = 0; l < 35; ++l) published_definition += (!slice->skipped[l] && slice->kv_source[l] != l) * unused_kv;
    EXPECT_NEAR(published_definition / 1e9, row.effective_params_b, 0.025);
  }
  // The E2B row: 30 layers at 8192, layers 20-24 (the first five shared) gone.
  const PublishedSlice e2b = PublishedTable()[1];
  auto slice = Slice::Create(e4b, 2048, e2b.ffn_widths, e2b.skipped_layers);
  ASSERT_TRUE(slice.ok());
  for (int l = 20; l < 25; ++l) EXPECT_TRUE(slice->skipped[l]);
  EXPECT_EQ(slice->ffn_width[30], 8192);
}

TEST(Gemma3nSlicingTable, InvalidSlicesAreRejected) {
  const Config e4b = E4BConfig();
  auto full = [](int n, int64_t w) { return std::vector<int64_t>(n, w); };
  struct Case {
    std::vector<int64_t> widths;
    std::vector<int> skipped;
    std::string expected;
  } cases[] = {
      {full(34, 8192), {18}, "layer 18 cannot be skipped: kept layer 20 reads its K/V"},
      {full(34, 8192), {19}, "layer 19 cannot be skipped: kept layer 24 reads its K/V"},
      {full(34, 8192), {35}, "skipped layer 35 outside [0, 35)"},
      {full(33, 8192), {3, 3}, "layer 3 skipped twice"},
      {full(35, 8192), {3}, "35 FFN widths for 34 kept layers"},
      {full(35, 3000), {}, "FFN width 3000 must be a multiple of 2048 up to 16384"},
      {full(35, 18432), {}, "FFN width 18432"},
      {full(35, 0), {}, "FFN width 0"},
  };
  for (const Case& c : cases) {
    auto slice = Slice::Create(e4b, 2048, c.widths, c.skipped);
    ASSERT_FALSE(slice.ok()) << c.expected;
    EXPECT_TRUE(absl::StrContains(slice.status().message(), c.expected)) << slice.status() << " vs " << c.expected;
  }
  // Skipping every layer but the two producers' would leave shared layers
  // with sources; skipping all shared layers is fine (the E2B row).
  std::vector<int> all_but_first;
  for (int l = 1; l < 35; ++l) {
    if (l != 18 && l != 19) all_but_first.push_back(l);
  }
  EXPECT_TRUE(Slice::Create(e4b, 2048, full(3, 2048), all_but_first).ok());
}

// --- Slices of the tiny checkpoint (widths 128, slab granule 32 here).

constexpr int64_t kGranule = 32;

const Model& TinyModel() {
  static const Model* const model = [] {
    auto loaded = Model::Load(Gemma3nTinyDir(), {.ffn_granule = kGranule});
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return loaded.ok() ? loaded->release() : nullptr;
  }();
  return *model;
}

std::vector<int32_t> GoldenTokens() { return ReadJson(Gemma3nTinyDir() + "/golden_tokens.json")["ids"]; }

// Logits of every golden position: 48 tokens of prefill, then cached decoding.
std::vector<float> RunGolden(const Model& model, const Slice& slice) {
  const std::vector<int32_t> tokens = GoldenTokens();
  const std::unique_ptr<KvPool> cache_pool = model.NewKvPool(256);
  KvCache cache(cache_pool.get());
  auto prefill = model.Forward(slice, absl::MakeConstSpan(tokens).subspan(0, 48), cache, {.all_logits = true});
  EXPECT_TRUE(prefill.ok()) << prefill.status();
  if (!prefill.ok()) return {};
  std::vector<float> all = *prefill;
  for (size_t t = 48; t < tokens.size(); ++t) {
    auto step = model.Forward(slice, absl::MakeConstSpan(tokens).subspan(t, 1), cache, {});
    EXPECT_TRUE(step.ok()) << step.status();
    if (!step.ok()) return {};
    all.insert(all.end(), step->begin(), step->end());
  }
  return all;
}

double MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) diff = std::max<double>(diff, std::fabs(a[i] - b[i]));
  return diff;
}

bool AllFinite(const std::vector<float>& values) {
  for (float v : values) {
    if (!std::isfinite(v)) return false;
  }
  return !values.empty();
}

TEST(Gemma3nSlices, FullWidthSliceEqualsUnslicedModel) {
  const Model& model = TinyModel();
  auto full_width = model.MakeSlice(std::vector<int64_t>(25, 128), {}, "full-by-widths");
  ASSERT_TRUE(full_width.ok()) << full_width.status();
  const std::vector<float> sliced = RunGolden(model, *full_width);
  EXPECT_EQ(sliced, RunGolden(model, Slice::Full(model.config())));

  // Against the model loaded with one FFN slab per layer (no nesting) and the HF golden.
  auto unsliced = Model::Load(Gemma3nTinyDir());
  ASSERT_TRUE(unsliced.ok());
  const double vs_one_slab = MaxDiff(sliced, RunGolden(**unsliced, Slice::Full((*unsliced)->config())));
  auto golden = testing::ReadNpy(Gemma3nTinyDir() + "/golden_logits_hf.npy");
  ASSERT_TRUE(golden.ok());
  const double vs_golden = MaxDiff(sliced, golden->data);
  std::printf("full-width slice (4 slabs of 32) vs one slab: max |diff| %.3g; vs golden HF %.3g\n", vs_one_slab,
              vs_golden);
  // Slab-wise accumulation of the down projection changes the f32 summation
  // order: measured 1.8e-5, the model's f32 noise floor (f32 vs f64: 2.3e-5).
  EXPECT_LE(vs_one_slab, 1e-4);
  EXPECT_LE(vs_golden, 1e-4);
}

TEST(Gemma3nSlices, NarrowerSliceGivesOtherFiniteLogits) {
  const Model& model = TinyModel();
  const std::vector<float> full = RunGolden(model, Slice::Full(model.config()));
  for (int64_t width : {32, 64, 96}) {
    auto slice = model.MakeSlice(std::vector<int64_t>(25, width), {});
    ASSERT_TRUE(slice.ok()) << slice.status();
    const std::vector<float> logits = RunGolden(model, *slice);
    ASSERT_TRUE(AllFinite(logits)) << width;
    const double diff = MaxDiff(logits, full);
    std::printf("width %lld everywhere vs full: max |diff| %.3g\n", static_cast<long long>(width), diff);
    EXPECT_GT(diff, 0.1) << width;
  }
  // 48 is not a slab boundary with granule 32.
  EXPECT_FALSE(model.MakeSlice(std::vector<int64_t>(25, 48), {}).ok());
}

// Narrower FFNs and two skipped layers (one owning its K/V, one KV-shared)
// equal the same slice written as its own checkpoint and run unsliced: the
// slicer applies the MatFormer Lab rules (renumbered layers, lower
// num_kv_shared_layers, PLE of the kept layers), so this checks that the
// engine's skipping is what HF computes on a sliced checkpoint.
TEST(Gemma3nSlices, SkippedLayersEqualOfflineSlicedCheckpoint) {
  const Model& model = TinyModel();
  std::vector<int64_t> widths;
  for (int i = 0; i < 23; ++i) widths.push_back(i < 10 ? 64 : (i < 18 ? 96 : 128));
  auto slice = model.MakeSlice(widths, {3, 21}, "narrow-skip-3-21");
  ASSERT_TRUE(slice.ok()) << slice.status();
  EXPECT_EQ(slice->kv_source[22], 18);
  EXPECT_EQ(slice->kv_source[24], 19);
  const std::vector<float> engine = RunGolden(model, *slice);
  ASSERT_TRUE(AllFinite(engine));

  const std::string dir = FreshDirectory("gemma3n_sliced");
  const ScopedDirectory cleanup(dir);
  ASSERT_TRUE(WriteSlicedCheckpoint(Gemma3nTinyDir(), *slice, dir).ok());
  const Json config = ReadJson(dir + "/config.json");
  EXPECT_EQ(config["num_hidden_layers"], 23);
  EXPECT_EQ(config["num_kv_shared_layers"], 4);
  EXPECT_EQ(config["layer_types"][3], "full_attention");  // old layer 4
  EXPECT_EQ(config["activation_sparsity_pattern"][8], 0.95);  // old layer 9
  EXPECT_EQ(config["activation_sparsity_pattern"][9], 0.0);   // old layer 10
  auto sliced_model = Model::Load(dir, {.ffn_granule = kGranule});
  ASSERT_TRUE(sliced_model.ok()) << sliced_model.status();
  const std::vector<float> offline = RunGolden(**sliced_model, Slice::Full((*sliced_model)->config()));
  const double diff = MaxDiff(engine, offline);
  const double vs_full = MaxDiff(engine, RunGolden(model, Slice::Full(model.config())));
  std::printf("slice (narrow FFNs, layers 3 and 21 skipped): engine vs offline-sliced checkpoint max |diff| %.3g; "
              "vs full model %.3g\n",
              diff, vs_full);
  EXPECT_LE(diff, 1e-5);
  EXPECT_GT(vs_full, 0.1);
}

// FFN widths may change between steps of one sequence (they do not touch the
// K/V); the result equals running the whole sequence with those widths per step.
TEST(Gemma3nSlices, WidthMayChangeBetweenSteps) {
  const Model& model = TinyModel();
  const std::vector<int32_t> tokens = GoldenTokens();
  auto narrow = model.MakeSlice(std::vector<int64_t>(25, 64), {});
  ASSERT_TRUE(narrow.ok());
  const Slice full = Slice::Full(model.config());
  const std::unique_ptr<KvPool> cache_pool = model.NewKvPool(256);
  KvCache cache(cache_pool.get());
  ASSERT_TRUE(model.Forward(*narrow, absl::MakeConstSpan(tokens).subspan(0, 10), cache).ok());
  auto next = model.Forward(full, absl::MakeConstSpan(tokens).subspan(10, 1), cache);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_TRUE(AllFinite(*next));
  EXPECT_EQ(cache.length(), 11);
}

}  // namespace
}  // namespace matformer::gemma3n

namespace matformer::gemma3n {
namespace {

// One Step over sequences of different slices (full, narrow + skipped layers,
// mixed widths, narrowest + another skip), mixing prefill chunks and decode
// tokens, gives each sequence the logits it gets when run alone.
TEST(Gemma3nSlices, BatchedStepEqualsSequencesRunAlone) {
  const Model& model = TinyModel();
  const std::vector<int32_t> golden = GoldenTokens();
  std::vector<int64_t> mixed;
  for (int l = 0; l < 25; ++l) mixed.push_back(32 * (1 + l % 4));
  struct Sequence {
    Slice slice;
    std::vector<int32_t> tokens;
    std::vector<size_t> chunks;  // tokens per step
  };
  std::vector<Sequence> sequences = {
      {Slice::Full(model.config()), golden, {48, 1, 1, 1, 1, 1, 1, 1, 1}},
      {*model.MakeSlice(std::vector<int64_t>(23, 64), {3, 21}), {golden.begin(), golden.begin() + 40}, {10, 20, 1, 1, 1, 1, 1, 5}},
      {*model.MakeSlice(mixed, {}), {golden.begin() + 10, golden.end()}, {40, 1, 1, 1, 1, 1, 1}},
      {*model.MakeSlice(std::vector<int64_t>(24, 32), {5}), {golden.begin(), golden.begin() + 30}, {5, 5, 5, 5, 5, 5}},
  };
  // Alone: each sequence through its own chunks.
  std::vector<std::vector<float>> alone(sequences.size()), batched(sequences.size());
  for (size_t s = 0; s < sequences.size(); ++s) {
    const std::unique_ptr<KvPool> cache_pool = model.NewKvPool(256);
    KvCache cache(cache_pool.get());
    size_t done = 0;
    for (size_t chunk : sequences[s].chunks) {
      auto logits = model.Forward(sequences[s].slice, absl::MakeConstSpan(sequences[s].tokens).subspan(done, chunk),
                                  cache, {.all_logits = true});
      ASSERT_TRUE(logits.ok()) << logits.status();
      alone[s].insert(alone[s].end(), logits->begin(), logits->end());
      done += chunk;
    }
    ASSERT_EQ(done, sequences[s].tokens.size());
  }
  // Batched: step k runs chunk k of every sequence that has one.
  const std::unique_ptr<KvPool> pool = model.NewKvPool(256);
  std::vector<std::unique_ptr<KvCache>> caches;
  for (size_t s = 0; s < sequences.size(); ++s) caches.push_back(std::make_unique<KvCache>(pool.get()));
  std::vector<size_t> done(sequences.size(), 0);
  const int64_t V = model.config().vocab_size;
  for (size_t step = 0;; ++step) {
    std::vector<StepInput> inputs;
    std::vector<size_t> which;
    for (size_t s = 0; s < sequences.size(); ++s) {
      if (step >= sequences[s].chunks.size()) continue;
      const size_t chunk = sequences[s].chunks[step];
      inputs.push_back({.slice = &sequences[s].slice, .cache = caches[s].get(),
                        .tokens = absl::MakeConstSpan(sequences[s].tokens).subspan(done[s], chunk), .all_logits = true});
      which.push_back(s);
      done[s] += chunk;
    }
    if (inputs.empty()) break;
    auto logits = model.Step(inputs);
    ASSERT_TRUE(logits.ok()) << logits.status();
    size_t offset = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const size_t n = inputs[i].tokens.size() * V;
      batched[which[i]].insert(batched[which[i]].end(), logits->begin() + offset, logits->begin() + offset + n);
      offset += n;
    }
    ASSERT_EQ(offset, logits->size());
  }
  for (size_t s = 0; s < sequences.size(); ++s) {
    const double diff = MaxDiff(batched[s], alone[s]);
    std::printf("batched step vs alone, sequence %zu (%s): max |diff| %.3g\n", s, sequences[s].slice.name.c_str(), diff);
    // Rows share matmuls of another row count, so f32 summation differs:
    // measured up to 1.2e-5, the model's f32 noise floor (f32 vs f64: 2.3e-5).
    EXPECT_LE(diff, 1e-4) << s;
    EXPECT_TRUE(AllFinite(batched[s]));
  }
  // The same cache twice in one step is refused, and nothing changes.
  const std::unique_ptr<KvPool> cache_pool = model.NewKvPool(256);
  KvCache cache(cache_pool.get());
  const std::vector<int32_t> one = {2};
  const StepInput twice[] = {{.slice = &sequences[0].slice, .cache = &cache, .tokens = one},
                             {.slice = &sequences[0].slice, .cache = &cache, .tokens = one}};
  EXPECT_FALSE(model.Step(twice).ok());
  EXPECT_EQ(cache.length(), 0);
}

}  // namespace
}  // namespace matformer::gemma3n
