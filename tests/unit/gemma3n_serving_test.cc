// Gemma 3n behind the serving interfaces: the published slicing table as the
// planner's quality table (on E4B's shapes), and the tiny checkpoint served
// through gemma3n::ServingModel and the real Scheduler, checked against the
// model's own greedy decoding.
//
// tests/data/gemma3n-tiny-slicing.csv is a slicing table in the published
// format for the tiny checkpoint (25 layers, FFN 128, slabs of 32); its
// accuracies are invented inputs that only order the rows.
#include <cmath>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "core/gemma3n/serving.h"
#include "core/sched/scheduler.h"
#include "gtest/gtest.h"
#include "tests/unit/test_sync.h"
#include "tests/unit/gemma3n_test_util.h"

namespace matformer::gemma3n {
namespace {

using ::matformer::testing::E4BConfig;
using ::matformer::testing::Gemma3nTinyDir;

constexpr int64_t kGranule = 32;

std::string DataPath(const std::string& name) { return std::string(MATFORMER_SOURCE_DIR) + "/tests/data/" + name; }

TEST(Gemma3nServing, PublishedTableBecomesTheQualityTableOfE4B) {
  const Config e4b = E4BConfig();
  auto serving = ServingConfig(e4b, 2048);
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_EQ(serving->granularities, (std::vector<int64_t>{2048, 4096, 6144, 8192, 10240, 12288, 14336, 16384}));
  auto candidates = CandidatesFromSlicingTable(e4b, 2048, *serving, DataPath("gemma3n-slicing-configs.csv"));
  ASSERT_TRUE(candidates.ok()) << candidates.status();
  ASSERT_EQ(candidates->size(), 16u);
  for (size_t i = 1; i < candidates->size(); ++i) {
    EXPECT_LE((*candidates)[i - 1].expected_loss, (*candidates)[i].expected_loss) << "best quality first";
  }
  // The table's best MMLU is not the full model's: two layer-level slices
  // reach 63.40% (vs 62.30%); at equal quality the cheaper one comes first.
  EXPECT_EQ(candidates->front().label, "Config for E3.59B (layer-level)");
  EXPECT_NEAR(candidates->front().expected_loss, 1 - 0.634, 1e-9);
  EXPECT_EQ((*candidates)[1].label, "Config for E3.79B (layer-level)");
  // E4B itself: every layer at 16384, nothing skipped, 1 - 62.30% MMLU.
  const Candidate* full = nullptr;
  for (const Candidate& candidate : *candidates) {
    if (candidate.label == "Main model") full = &candidate;
  }
  ASSERT_NE(full, nullptr);
  EXPECT_EQ(full->spec, SubmodelSpec::Full(*serving));
  EXPECT_NEAR(full->expected_loss, 1 - 0.623, 1e-9);
  // E2B: 8192 on the 30 kept layers, layers 20-24 skipped.
  const Candidate* e2b = nullptr;
  for (const Candidate& candidate : *candidates) {
    if (candidate.label == "Config for official E2B Model") e2b = &candidate;
  }
  ASSERT_NE(e2b, nullptr);
  EXPECT_EQ(e2b->spec.SkippedLayers(), (std::vector<int>{20, 21, 22, 23, 24}));
  for (int l = 0; l < 35; ++l) EXPECT_EQ(e2b->spec.ffn_width(l), l >= 20 && l < 25 ? 0 : 8192) << l;
  // The spec's active parameters are the slice's (AltUp, LAuReL, KV sharing counted).
  auto slice = SpecToSlice(e4b, 2048, e2b->spec);
  ASSERT_TRUE(slice.ok()) << slice.status();
  EXPECT_EQ(e2b->spec.active_params(), slice->ActiveParams(e4b));
  EXPECT_LT(e2b->spec.active_params(), full->spec.active_params());
}

TEST(Gemma3nServing, TablesThatDoNotFitTheModelAreRefusedNamingTheRow) {
  const Config e4b = E4BConfig();
  const ModelConfig serving = *ServingConfig(e4b, 2048);
  // The tiny model's table on E4B: 25 widths for 35 layers.
  auto wrong_shape = CandidatesFromSlicingTable(e4b, 2048, serving, DataPath("gemma3n-tiny-slicing.csv"));
  ASSERT_FALSE(wrong_shape.ok());
  EXPECT_TRUE(absl::StrContains(wrong_shape.status().message(), "row 'Tiny full'")) << wrong_shape.status();
  EXPECT_FALSE(CandidatesFromSlicingTable(e4b, 2048, serving, DataPath("no-such-table.csv")).ok());
  // Widths off the slab boundaries of a model packed in larger slabs.
  auto tiny = Model::Load(Gemma3nTinyDir(), {.ffn_granule = 64});
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  const ModelConfig tiny_serving = *ServingConfig((*tiny)->config(), 64);
  auto off_slab = CandidatesFromSlicingTable((*tiny)->config(), 64, tiny_serving, DataPath("gemma3n-tiny-slicing.csv"));
  ASSERT_FALSE(off_slab.ok());
  EXPECT_TRUE(absl::StrContains(off_slab.status().message(), "row 'Tiny narrow skipping'")) << off_slab.status();
}

class Gemma3nServingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = Model::Load(Gemma3nTinyDir(), {.ffn_granule = kGranule});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    auto engine = ServingModel::Create(model_, {.kv_blocks = 256, .ple_cache_bytes = 1 << 20});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
    auto candidates =
        CandidatesFromSlicingTable(model_->config(), kGranule, engine_->config(), DataPath("gemma3n-tiny-slicing.csv"));
    ASSERT_TRUE(candidates.ok()) << candidates.status();
    candidates_ = *candidates;
  }

  // A scheduler planning with a fixed latency model: 1 ms + 0.1 ms per row
  // per step at every width, scaled by width (so narrower slices are faster).
  void StartScheduler() {
    std::vector<double> fixed, per_row;
    for (size_t g = 0; g < engine_->config().granularities.size(); ++g) {
      fixed.push_back(1e-3 * (g + 1));
      per_row.push_back(1e-4 * (g + 1));
    }
    planner_ = std::make_unique<Planner>(engine_->config(), candidates_,
                                         LatencyModel(fixed, per_row, engine_->config().num_layers),
                                         PlanPolicy::kElastic, std::nullopt, OverBudget::kReject, 256);
    planner_->latency().set_learning(false);
    planner_->correction().set_learning(false);
    scheduler_ = std::make_unique<Scheduler>(engine_.get(), planner_.get(), SchedulerOptions{});
  }

  SubmodelSpec SpecOf(const std::string& label) const {
    for (const Candidate& candidate : candidates_) {
      if (candidate.label == label) return candidate.spec;
    }
    ADD_FAILURE() << "no row " << label;
    return SubmodelSpec::Full(engine_->config());
  }

  // The model's own greedy decoding of `prompt` under `spec`, one sequence
  // alone (Model::Forward), and the logits at each step.
  std::vector<int32_t> GreedyAlone(const SubmodelSpec& spec, const std::vector<int32_t>& prompt, int max_new,
                                   std::vector<std::vector<float>>* step_logits) {
    const Slice slice = *SpecToSlice(model_->config(), kGranule, spec);
    const std::unique_ptr<KvPool> pool = model_->NewKvPool(64);
    KvCache cache(pool.get());
    std::vector<int32_t> tokens;
    auto logits = model_->Forward(slice, prompt, cache);
    for (int i = 0; i < max_new && logits.ok(); ++i) {
      step_logits->push_back(*logits);
      const int32_t next = static_cast<int32_t>(std::max_element(logits->begin(), logits->end()) - logits->begin());
      tokens.push_back(next);
      if (engine_->IsEndOfSequence(next)) break;
      const std::vector<int32_t> one = {next};
      logits = model_->Forward(slice, one, cache);
    }
    EXPECT_TRUE(logits.ok()) << logits.status();
    return tokens;
  }

  std::shared_ptr<const Model> model_;
  std::unique_ptr<ServingModel> engine_;
  std::vector<Candidate> candidates_;
  std::unique_ptr<Planner> planner_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(Gemma3nServingTest, ServingConfigAndSpecChecks) {
  const ModelConfig& config = engine_->config();
  EXPECT_EQ(config.granularities, (std::vector<int64_t>{32, 64, 96, 128}));
  EXPECT_EQ(config.num_layers, 25);
  EXPECT_EQ(engine_->family(), "gemma3n");
  EXPECT_TRUE(engine_->IsEndOfSequence(1));
  EXPECT_FALSE(engine_->IsEndOfSequence(2));
  EXPECT_TRUE(engine_->ValidateSpec(SpecOf("Tiny narrow skipping")).ok());
  // Layer 18 is the K/V source of the kept sliding layers 20-23: it may not be skipped.
  auto skips_source = SubmodelSpec::Create(config, std::vector<int64_t>(25, 64), {18});
  ASSERT_TRUE(skips_source.ok());
  const absl::Status refused = engine_->ValidateSpec(*skips_source);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(refused.message(), "18")) << refused;
  // Chat goes through the Gemma 3n template; roles must alternate.
  auto chat = engine_->FormatChat({{"user", "hi"}});
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(*chat, "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(engine_->FormatChat({{"assistant", "hi"}}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Gemma3nServing, GenerationConfigEosIdsEndGenerationAndAreChecked) {
  const std::string dir = ::matformer::testing::WriteTinyCopy("gemma3n-eos", nullptr, nullptr);
  const ::matformer::testing::ScopedDirectory cleanup(dir);
  std::filesystem::copy_file(Gemma3nTinyDir() + "/tokenizer.model", dir + "/tokenizer.model");
  ::matformer::testing::WriteText(dir + "/generation_config.json", R"({"eos_token_id": [1, 7]})");
  auto model = Model::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto engine = ServingModel::Create(*std::move(model), {.kv_blocks = 4});
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_TRUE((*engine)->IsEndOfSequence(1));
  EXPECT_TRUE((*engine)->IsEndOfSequence(7));
  EXPECT_FALSE((*engine)->IsEndOfSequence(8));

  ::matformer::testing::WriteText(dir + "/generation_config.json", R"({"eos_token_id": 128})");
  auto bad_model = Model::Load(dir);
  ASSERT_TRUE(bad_model.ok()) << bad_model.status();
  auto refused = ServingModel::Create(*std::move(bad_model), {.kv_blocks = 4});
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "generation_config.json: eos_token_id")) << refused.status();
}

TEST_F(Gemma3nServingTest, EngineStepEqualsTheModelsForward) {
  const std::vector<int32_t> prompt = {2, 68, 20, 13, 18, 55, 44, 57, 50, 55, 8, 11};
  for (const Candidate& candidate : candidates_) {
    auto sequence = engine_->NewSequence(candidate.spec);
    const matformer::StepInput input{sequence.get(), prompt};
    auto served = engine_->Step({&input, 1});
    ASSERT_TRUE(served.ok()) << served.status();
    std::vector<std::vector<float>> reference;
    GreedyAlone(candidate.spec, prompt, 1, &reference);
    ASSERT_EQ(reference.size(), 1u);
    EXPECT_EQ(*served, reference[0]) << candidate.label;
    EXPECT_EQ(sequence->kv.length(), static_cast<int64_t>(prompt.size()));
  }
  EXPECT_EQ(engine_->kv_pool().used_blocks(), 0) << "blocks go back with their sequences";
  EXPECT_GT(engine_->ple_cache().stats().hits, 0u) << "one PLE cache serves every slice";
}

TEST_F(Gemma3nServingTest, SchedulerServesEverySliceConcurrentlyAsTheModelDecodesAlone) {
  StartScheduler();
  struct Outcome {
    SchedulerResult result;
    testing::Notification done;
  };
  std::vector<std::unique_ptr<Outcome>> outcomes;
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    prompts.push_back({2, static_cast<int32_t>(40 + i), 13, 18, 55, static_cast<int32_t>(60 + 3 * i), 57});
    SchedulerRequest request;
    request.prompt = prompts.back();
    request.max_new_tokens = 10;
    request.pinned_spec = candidates_[i].spec;
    outcomes.push_back(std::make_unique<Outcome>());
    Outcome* outcome = outcomes.back().get();
    auto handle = scheduler_->Submit(std::move(request),
                                     {.on_tokens = nullptr, .on_done = [outcome](const SchedulerResult& result) {
                                        outcome->result = result;
                                        outcome->done.Notify();
                                      }});
    ASSERT_TRUE(handle.ok()) << handle.status();
  }
  for (auto& outcome : outcomes) outcome->done.WaitForNotification();
  for (size_t i = 0; i < candidates_.size(); ++i) {
    const SchedulerResult& result = outcomes[i]->result;
    ASSERT_TRUE(result.status.ok()) << result.status;
    EXPECT_EQ(result.plan.choice.spec, candidates_[i].spec);
    std::vector<std::vector<float>> logits;
    const std::vector<int32_t> alone = GreedyAlone(candidates_[i].spec, prompts[i], 10, &logits);
    // Batched rows share matmuls of other row counts (f32 summation order):
    // tokens agree up to a near-tie of the lone run's top two logits.
    size_t k = 0;
    while (k < alone.size() && k < result.tokens.size() && alone[k] == result.tokens[k]) ++k;
    if (k < alone.size() || k < result.tokens.size()) {
      ASSERT_TRUE(k < alone.size() && k < result.tokens.size()) << candidates_[i].label << ": lengths differ";
      EXPECT_LT(std::abs(logits[k][alone[k]] - logits[k][result.tokens[k]]), 1e-4f)
          << candidates_[i].label << ": token " << k << " differs without a near-tie";
    }
  }
  EXPECT_EQ(engine_->kv_pool().used_blocks(), 0);
}

TEST_F(Gemma3nServingTest, PlannerPicksACheaperPublishedSliceForATighterBudget) {
  StartScheduler();
  auto plan_for = [&](absl::Duration budget) -> absl::StatusOr<Candidate> {
    SchedulerRequest request;
    request.prompt = {2, 68, 20, 13};
    request.max_new_tokens = 20;
    request.budget = budget;
    testing::Notification done;
    SchedulerResult result;
    auto handle =
        scheduler_->Submit(std::move(request), {.on_tokens = nullptr, .on_done = [&](const SchedulerResult& r) {
                                                  result = r;
                                                  done.Notify();
                                                }});
    if (!handle.ok()) return handle.status();
    done.WaitForNotification();
    if (!result.status.ok()) return result.status;
    return result.plan.choice;
  };
  auto loose = plan_for(absl::Seconds(10));
  ASSERT_TRUE(loose.ok()) << loose.status();
  EXPECT_EQ(loose->label, "Tiny full");
  // Prefill and 20 decode steps at 1 row, by the fixed latency model above:
  // about 94 ms at full width, 75 ms mixed, 47 ms half, 21 ms for the narrow
  // skipping slice; 60 ms (with the planner's margin) fits only the last two.
  auto tight = plan_for(absl::Milliseconds(60));
  ASSERT_TRUE(tight.ok()) << tight.status();
  EXPECT_LT(tight->spec.active_params(), loose->spec.active_params()) << tight->label;
  EXPECT_EQ(plan_for(absl::Microseconds(10)).status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace matformer::gemma3n
