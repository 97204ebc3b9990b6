#include "core/sched/scheduler.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/generate.h"
#include "core/plan/planner.h"
#include "gtest/gtest.h"
#include "tests/unit/test_sync.h"
#include "tests/unit/test_model.h"

namespace matformer {
namespace {

using testing::TinyConfig;

// Synthetic latency: per granularity S..XL, 1..4 ms per step plus 0.1..0.4 ms per row.
LatencyModel SyntheticLatency(int layers) {
  return LatencyModel({1e-3, 2e-3, 3e-3, 4e-3}, {1e-4, 2e-4, 3e-4, 4e-4}, layers);
}

std::vector<Candidate> UniformCandidates(const ModelConfig& config) {
  std::vector<Candidate> candidates;
  const double losses[] = {4.0, 3.5, 3.2, 3.0};
  for (int g = 3; g >= 0; --g) {
    candidates.push_back({*SubmodelSpec::Uniform(config, config.granularity_names[g]), losses[g], true, ""});
  }
  return candidates;
}

class PlannerTest : public ::testing::Test {
 protected:
  PlannerTest()
      : config_(TinyConfig(DType::kF32)),
        planner_(config_, UniformCandidates(config_), SyntheticLatency(config_.num_layers), PlanPolicy::kElastic,
                 std::nullopt, OverBudget::kReject, 64) {}
  PlanRequest Request(absl::Duration budget) {
    return {.prompt_tokens = 32, .max_new_tokens = 20, .budget = budget, .pinned = {}, .max_expected_loss = {}};
  }
  ModelConfig config_;
  Planner planner_;
};

TEST_F(PlannerTest, ShrinkingBudgetNeverGrowsTheChoice) {
  int64_t previous = std::numeric_limits<int64_t>::max();
  int distinct = 0;
  for (int budget_ms = 200; budget_ms >= 20; budget_ms -= 5) {
    absl::StatusOr<Plan> plan = planner_.Choose(Request(absl::Milliseconds(budget_ms)), {});
    if (!plan.ok()) break;
    // Expected to fit; with the safety margin too, unless it is the fastest there is.
    EXPECT_LE(plan->predicted_total(), absl::Milliseconds(budget_ms));
    const int64_t params = plan->choice.spec.active_params();
    if (!plan->fits_budget) {
      EXPECT_EQ(plan->choice.spec, *SubmodelSpec::Uniform(config_, "S")) << budget_ms;
    }
    EXPECT_LE(params, previous) << budget_ms;
    distinct += params != previous;
    previous = params;
  }
  EXPECT_EQ(distinct, 4);  // the sweep visits XL, L, M and S
}

TEST_F(PlannerTest, LoadMakesTheSameBudgetPickASmallerSpec) {
  // Exactly what the full model needs when idle, with the correction's margin.
  const SubmodelSpec full = *SubmodelSpec::Uniform(config_, "XL");
  const absl::Duration budget =
      planner_.PredictTotal(full, Request(absl::InfiniteDuration()), {}) * planner_.correction().factors().conservative();
  const Plan idle = *planner_.Choose(Request(budget), {});
  EXPECT_EQ(idle.choice.spec, full);
  const SubmodelSpec small = *SubmodelSpec::Uniform(config_, "S");
  LoadSnapshot busy;
  for (int i = 0; i < 8; ++i) busy.decode_rows.push_back(&small);
  const Plan loaded = *planner_.Choose(Request(budget), busy);
  EXPECT_LT(loaded.choice.spec.active_params(), idle.choice.spec.active_params());
}

TEST_F(PlannerTest, RequestsSlowerThanPredictedMakeThePlannerCautious) {
  const SubmodelSpec full = *SubmodelSpec::Uniform(config_, "XL");
  const absl::Duration step_model = planner_.PredictTotal(full, Request(absl::InfiniteDuration()), {});
  const absl::Duration budget = step_model * planner_.correction().factors().conservative();
  EXPECT_EQ(planner_.Choose(Request(budget), {})->choice.spec, full);
  // Requests keep taking twice what the step model predicts.
  for (int i = 0; i < 100; ++i) planner_.correction().Observe(absl::Milliseconds(10), absl::Milliseconds(20));
  const RequestCorrection::Factors factors = planner_.correction().factors();
  EXPECT_NEAR(factors.mean, 2.0, 1e-3);
  EXPECT_LT(factors.deviation, 0.01);
  const Plan plan = *planner_.Choose(Request(budget), {});
  EXPECT_LT(plan.choice.spec.active_params(), full.active_params());
  EXPECT_DOUBLE_EQ(plan.request_scale, factors.mean);
  // The reported prediction is scaled, so it matches what requests really take.
  const absl::Duration scaled = planner_.Choose(Request(absl::InfiniteDuration()), {})->predicted_total();
  EXPECT_NEAR(absl::ToDoubleSeconds(scaled), 2 * absl::ToDoubleSeconds(step_model), 1e-3 * absl::ToDoubleSeconds(step_model));
}

TEST_F(PlannerTest, LooseBudgetDoesNotBreakATightBudgetAlreadyAdmitted) {
  const SubmodelSpec small = *SubmodelSpec::Uniform(config_, "S");
  const SubmodelSpec full = *SubmodelSpec::Uniform(config_, "XL");
  LoadSnapshot load;
  load.decode_rows = {&small};
  const absl::Duration own = planner_.latency().StepTime(load.decode_rows, config_) * 10;
  const double margin = planner_.correction().factors().conservative();
  // An admitted request with 10 steps left and 30% slack over what it needs.
  load.commitments = {{.time_left = own * margin * 1.3, .remaining_steps = 10}};
  const PlanRequest loose = Request(absl::Seconds(100));
  EXPECT_FALSE(planner_.KeepsCommitments(full, loose, load));
  const Plan plan = *planner_.Choose(loose, load);
  EXPECT_LT(plan.choice.spec.active_params(), full.active_params());
  EXPECT_TRUE(plan.fits_budget);
  // With room to spare, or when the admitted request is late anyway, the newcomer gets the best.
  load.commitments[0].time_left = absl::Seconds(100);
  EXPECT_EQ(planner_.Choose(loose, load)->choice.spec, full);
  load.commitments[0].time_left = own * 0.5;
  EXPECT_EQ(planner_.Choose(loose, load)->choice.spec, full);
}

TEST(LatencyModelTest, SavedModelLoadsBackAndBadFilesNameTheField) {
  const ModelConfig config = TinyConfig(DType::kF32);
  const std::string directory = testing::FreshDirectory("latency");
  std::filesystem::create_directories(directory);
  const LatencyModel model({0.001, 0.002, 0.003, 0.004}, {1e-5, 2e-5, 3e-5, 4e-5}, config.num_layers);
  ASSERT_TRUE(model.Save(config, directory + "/model.json").ok());
  absl::StatusOr<LatencyModel> loaded = LatencyModel::Load(config, directory + "/model.json");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const SubmodelSpec full = *SubmodelSpec::Uniform(config, "XL");
  const std::vector<const SubmodelSpec*> rows(5, &full);
  EXPECT_NEAR(absl::ToDoubleSeconds(loaded->StepTime(rows, config)),
              absl::ToDoubleSeconds(model.StepTime(rows, config)), 1e-12);

  auto error = [&](const std::string& json) {
    std::ofstream(directory + "/bad.json") << json;
    return std::string(LatencyModel::Load(config, directory + "/bad.json").status().message());
  };
  const std::string all = R"("S": {"fixed_ms": 1, "per_row_ms": 0.1}, "M": {"fixed_ms": 1, "per_row_ms": 0.1},
                             "L": {"fixed_ms": 1, "per_row_ms": 0.1})";
  EXPECT_NE(error("[]").find("expected an object with a \"granularities\" object"), std::string::npos);
  EXPECT_NE(error(R"({"granularities": {)" + all + "}}").find("granularities.XL: missing"), std::string::npos);
  EXPECT_NE(error(R"({"granularities": {)" + all + R"(, "XL": {"fixed_ms": -1, "per_row_ms": 0}}})")
                .find("granularities.XL.fixed_ms: must be a number in [0, 60000]"),
            std::string::npos);
  EXPECT_NE(error(R"({"granularities": {)" + all +
                  R"(, "XL": {"fixed_ms": 1, "per_row_ms": 1}, "XXL": {"fixed_ms": 1, "per_row_ms": 1}}})")
                .find("granularities.XXL: not a granularity of the model"),
            std::string::npos);
  EXPECT_EQ(LatencyModel::Load(config, directory + "/missing.json").status().code(), absl::StatusCode::kNotFound);
}

TEST(ComposeDecodeStepTest, LooseWideRowsWaitWhileATightRowDecodes) {
  const ModelConfig config = TinyConfig(DType::kF32);
  const LatencyModel latency = SyntheticLatency(config.num_layers);  // S: 1 ms + 0.1/row, XL: 4 ms + 0.4/row
  const SubmodelSpec small = *SubmodelSpec::Uniform(config, "S");
  const SubmodelSpec full = *SubmodelSpec::Uniform(config, "XL");
  const absl::Duration loose = absl::InfiniteDuration();
  // The tight row affords 3 ms per step: S rows alone fit (1.1-1.2 ms, x1.2), an XL row does not (4.5 ms).
  const std::vector<DecodeCandidate> candidates = {{loose, &full, 0},
                                                   {absl::Milliseconds(3), &small, 0},
                                                   {loose, &small, 0},
                                                   {loose, &full, kMaxSkippedSteps}};
  const DecodeStep step = ComposeDecodeStep(candidates, latency, config, 1.2);
  // The tight row first, the narrow loose row joins, the wide one waits, the
  // one that has waited too long joins anyway.
  EXPECT_EQ(step.rows, (std::vector<size_t>{1, 2, 3}));
  EXPECT_EQ(step.allowance, absl::Milliseconds(3));

  // Without a tight row everyone joins and nothing limits prefill.
  const DecodeStep relaxed = ComposeDecodeStep({{loose, &full, 0}, {loose, &small, 0}}, latency, config, 1.2);
  EXPECT_EQ(relaxed.rows, (std::vector<size_t>{0, 1}));
  EXPECT_EQ(relaxed.allowance, absl::InfiniteDuration());
  // A row that cannot make its budget even alone does not hold the others back.
  const DecodeStep late =
      ComposeDecodeStep({{absl::Microseconds(10), &small, 0}, {loose, &full, 0}}, latency, config, 1.2);
  EXPECT_EQ(late.rows, (std::vector<size_t>{0, 1}));
  EXPECT_TRUE(ComposeDecodeStep({}, latency, config, 1.2).rows.empty());
}

TEST(RequestCorrectionTest, ScattersWidenTheMarginAndOutliersAreClamped) {
  RequestCorrection correction;
  for (int i = 0; i < 200; ++i) {
    correction.Observe(absl::Milliseconds(10), absl::Milliseconds(i % 2 == 0 ? 5 : 15));
  }
  RequestCorrection::Factors f = correction.factors();
  EXPECT_NEAR(f.mean, 1.0, 0.1);
  EXPECT_GT(f.deviation, 0.4);
  EXPECT_GT(f.conservative(), 1.8);
  RequestCorrection stalled;
  stalled.Observe(absl::Milliseconds(1), absl::Seconds(100));  // ratio 1e5, clamped to 10
  EXPECT_NEAR(stalled.factors().mean, 0.9 + 0.1 * 10, 1e-9);
  stalled.Observe(absl::ZeroDuration(), absl::Seconds(1));  // nothing predicted: ignored
  EXPECT_NEAR(stalled.factors().mean, 1.9, 1e-9);
}

TEST_F(PlannerTest, NothingFitsIsAClearRejection) {
  const absl::Status status = planner_.Choose(Request(absl::Milliseconds(1)), {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("no submodel fits the latency budget of 1.0 ms: the fastest allowed (S"),
            std::string::npos)
      << status;
}

TEST_F(PlannerTest, ServeSmallestPolicyAndQualityFloorAndPins) {
  Planner lenient(config_, UniformCandidates(config_), SyntheticLatency(config_.num_layers), PlanPolicy::kElastic,
                  std::nullopt, OverBudget::kServeSmallest, 64);
  const Plan plan = *lenient.Choose(Request(absl::Milliseconds(1)), {});
  EXPECT_EQ(plan.choice.spec.name(), "S");
  EXPECT_FALSE(plan.fits_budget);

  PlanRequest floor = Request(absl::Seconds(10));
  floor.max_expected_loss = 2.0;
  EXPECT_EQ(planner_.Choose(floor, {}).status().message(),
            "max_expected_loss = 2 excludes every submodel (best expected loss 3)");
  floor.max_expected_loss = 3.6;
  floor.budget = absl::Milliseconds(45);  // only S would fit, but S's loss 4.0 is above the floor
  EXPECT_EQ(planner_.Choose(floor, {}).status().code(), absl::StatusCode::kResourceExhausted);

  PlanRequest pinned = Request(absl::Milliseconds(1));
  pinned.pinned = *SubmodelSpec::Parse(config_, "S-M-XL");
  const Plan pinned_plan = *planner_.Choose(pinned, {});
  EXPECT_EQ(pinned_plan.choice.spec.name(), "S-M-XL");
  EXPECT_FALSE(pinned_plan.fits_budget);
}

TEST_F(PlannerTest, OnlineCorrectionFollowsObservedSteps) {
  const SubmodelSpec s = *SubmodelSpec::Uniform(config_, "S");
  const std::vector<const SubmodelSpec*> rows = {&s};
  const absl::Duration predicted = planner_.latency().StepTime(rows, config_);
  for (int i = 0; i < 100; ++i) planner_.latency().Observe(rows, config_, predicted * 2);
  EXPECT_NEAR(planner_.latency().correction(), 2.0, 0.01);
}

TEST(CandidatesTest, QualityFileIsValidatedAndSorted) {
  const ModelConfig config = TinyConfig(DType::kF32);
  const std::string directory = testing::FreshDirectory("quality");
  std::filesystem::create_directories(directory);
  auto write = [&](const std::string& text) { std::ofstream(directory + "/quality.json") << text; };
  write(R"({"specs": [{"name": "S", "loss": 4.1}, {"name": "XL", "loss": 3.0}, {"name": "S-M-L", "loss": 3.5}]})");
  absl::StatusOr<std::vector<Candidate>> candidates = LoadCandidates(config, directory);
  ASSERT_TRUE(candidates.ok()) << candidates.status();
  ASSERT_EQ(candidates->size(), 3u);
  EXPECT_EQ((*candidates)[0].spec.name(), "XL");
  EXPECT_EQ((*candidates)[1].spec.name(), "S-M-L");
  write(R"({"specs": [{"name": "XXL", "loss": 1}]})");
  EXPECT_NE(LoadCandidates(config, directory).status().message().find("specs[0].name: spec: unknown granularity 'XXL'"),
            std::string::npos);
  write(R"({"specs": [{"name": "S", "loss": -1}]})");
  EXPECT_NE(LoadCandidates(config, directory).status().message().find("specs[0].loss = -1 must be finite and >= 0"),
            std::string::npos);
  write("not json");
  EXPECT_FALSE(LoadCandidates(config, directory).ok());
  std::filesystem::remove(directory + "/quality.json");
  candidates = LoadCandidates(config, directory);
  ASSERT_TRUE(candidates.ok());
  EXPECT_EQ(candidates->front().spec.name(), "XL");
  EXPECT_FALSE(candidates->front().measured);
}

// The scheduler over a real engine.
class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = testing::LoadRandomModel(TinyConfig(DType::kF32), "scheduler");
    ASSERT_NE(model_, nullptr);
    engine_ = *Engine::Create(model_, {.kv_blocks = 48, .kv_block_tokens = 16, .ple_cache_bytes = 1 << 20});
    planner_ = std::make_unique<Planner>(model_->config(), UniformCandidates(model_->config()),
                                         SyntheticLatency(model_->config().num_layers), PlanPolicy::kElastic,
                                         std::nullopt, OverBudget::kReject, 16);
    scheduler_ = std::make_unique<Scheduler>(engine_.get(), planner_.get(),
                                             SchedulerOptions{.max_batch_sequences = 8, .max_queue = 4,
                                                              .prefill_chunk = 16, .max_step_tokens = 64});
  }

  SchedulerRequest Greedy(int prompt_offset, const std::string& spec, int max_new_tokens = 12) {
    SchedulerRequest request;
    for (int i = 0; i < 20 + prompt_offset; ++i) request.prompt.push_back(3 + (i * 31 + prompt_offset) % 120);
    request.max_new_tokens = max_new_tokens;
    request.pinned_spec = *SubmodelSpec::Parse(model_->config(), spec);
    return request;
  }

  // Submits and waits for the result.
  struct Outcome {
    SchedulerResult result;
    std::string streamed;
    std::vector<int32_t> streamed_tokens;
  };
  std::shared_ptr<RequestHandle> Start(SchedulerRequest request, Outcome* outcome, testing::Notification* done) {
    absl::StatusOr<std::shared_ptr<RequestHandle>> handle = scheduler_->Submit(
        std::move(request),
        {.on_tokens =
             [outcome](const std::vector<int32_t>& tokens, const std::string& text) {
               outcome->streamed += text;
               outcome->streamed_tokens.insert(outcome->streamed_tokens.end(), tokens.begin(), tokens.end());
             },
         .on_done =
             [outcome, done](const SchedulerResult& result) {
               outcome->result = result;
               done->Notify();
             }});
    EXPECT_TRUE(handle.ok()) << handle.status();
    return handle.ok() ? *handle : nullptr;
  }

  // A batch and a lone run take different matmul paths (row counts), so their
  // logits differ in the last f32 bits. Greedy tokens must then agree, except
  // where the lone run's top two logits are a near-tie that such rounding can
  // flip; past a flip the sequences legitimately diverge.
  void ExpectSameTokensUpToNearTies(const SubmodelSpec& spec, const std::vector<int32_t>& prompt,
                                    const std::vector<int32_t>& batched, const std::vector<int32_t>& alone) {
    size_t k = 0;
    while (k < batched.size() && k < alone.size() && batched[k] == alone[k]) ++k;
    if (k == batched.size() && k == alone.size()) return;
    ASSERT_TRUE(k < batched.size() && k < alone.size()) << spec.name() << ": lengths differ";
    std::vector<int32_t> context = prompt;
    context.insert(context.end(), alone.begin(), alone.begin() + k);
    auto sequence = engine_->NewSequence(spec);
    StepInput input{sequence.get(), context};
    const std::vector<float> logits = *engine_->Step({&input, 1});
    EXPECT_LT(std::abs(logits[alone[k]] - logits[batched[k]]), 1e-4f)
        << spec.name() << ": token " << k << " differs (" << batched[k] << " vs " << alone[k]
        << ") without a near-tie";
  }

  std::shared_ptr<const Model> model_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Planner> planner_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTest, ConcurrentMixedSpecsMatchRunningAlone) {
  const std::vector<std::string> specs = {"XL", "S", "S-M-XL", "M-skip-L"};
  std::vector<Outcome> outcomes(specs.size());
  std::vector<testing::Notification> done(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) Start(Greedy(static_cast<int>(i), specs[i]), &outcomes[i], &done[i]);
  // Every request must be finished before the lone runs: Engine::Step is not
  // reentrant, and the scheduler thread drives the same engine.
  for (testing::Notification& notification : done) notification.WaitForNotification();
  for (size_t i = 0; i < specs.size(); ++i) {
    const SchedulerResult& result = outcomes[i].result;
    ASSERT_TRUE(result.status.ok()) << result.status;
    GenerateRequest alone;
    alone.prompt = Greedy(static_cast<int>(i), specs[i]).prompt;
    alone.max_new_tokens = 12;
    const SubmodelSpec spec = *SubmodelSpec::Parse(model_->config(), specs[i]);
    const GenerateResult expected = *GenerateAlone(*engine_, spec, alone);
    ExpectSameTokensUpToNearTies(spec, alone.prompt, result.tokens, expected.tokens);
    EXPECT_EQ(result.plan.choice.spec.name(), specs[i]);
    EXPECT_EQ(outcomes[i].streamed_tokens, result.tokens);
    EXPECT_EQ(outcomes[i].streamed, result.text);
    EXPECT_GT(result.timings.total, absl::ZeroDuration());
  }
  EXPECT_EQ(engine_->kv_pool().used_blocks(), 0);
}

TEST_F(SchedulerTest, CancellationStopsWorkAndFreesBlocks) {
  Outcome outcome;
  testing::Notification done;
  SchedulerRequest request = Greedy(0, "XL", /*max_new_tokens=*/100);
  std::shared_ptr<RequestHandle> handle = Start(std::move(request), &outcome, &done);
  handle->Cancel();
  done.WaitForNotification();
  EXPECT_EQ(outcome.result.status.code(), absl::StatusCode::kCancelled);
  EXPECT_LT(outcome.result.tokens.size(), 100u);
  EXPECT_EQ(engine_->kv_pool().used_blocks(), 0);
}

TEST_F(SchedulerTest, PrefillChunksShrinkToKeepATightDecodeInBudget) {
  // Large chunks, a fixed latency model (XL step = 4 ms + 0.4 ms per row) and no learning.
  scheduler_.reset();
  planner_->latency().set_learning(false);
  planner_->correction().set_learning(false);
  scheduler_ = std::make_unique<Scheduler>(
      engine_.get(), planner_.get(),
      SchedulerOptions{.max_batch_sequences = 8, .max_queue = 4, .prefill_chunk = 64, .max_step_tokens = 128});
  std::mutex mutex;
  std::vector<int> step_tokens;
  scheduler_->set_step_observer([&](int rows, absl::Duration) {
    std::lock_guard<std::mutex> lock(mutex);
    step_tokens.push_back(rows);
  });
  // A decodes 100 tokens in a 2 s budget: at most 2000 / 98 = 20.4 ms per
  // step once its first token is out. A step with a 64-token XL chunk
  // (4 + 65 * 0.4 = 30 ms, times the 1.2 margin) would not fit; up to 31
  // tokens (16.8 ms * 1.2) do.
  // Submitted together: the first step may carry both prompts, every later
  // step has A decoding.
  Outcome tight_outcome, long_outcome;
  testing::Notification tight_done, long_done;
  SchedulerRequest tight = Greedy(0, "XL", /*max_new_tokens=*/100);
  tight.budget = absl::Milliseconds(100 * 20);
  Start(std::move(tight), &tight_outcome, &tight_done);
  SchedulerRequest long_prompt = Greedy(80, "XL", /*max_new_tokens=*/1);  // 100 prompt tokens
  Start(std::move(long_prompt), &long_outcome, &long_done);
  long_done.WaitForNotification();
  tight_done.WaitForNotification();
  EXPECT_TRUE(tight_outcome.result.status.ok()) << tight_outcome.result.status;
  EXPECT_TRUE(long_outcome.result.status.ok()) << long_outcome.result.status;
  std::lock_guard<std::mutex> lock(mutex);
  ASSERT_FALSE(step_tokens.empty());
  int largest_shared = 0;
  for (size_t i = 1; i < step_tokens.size(); ++i) largest_shared = std::max(largest_shared, step_tokens[i]);
  EXPECT_LE(largest_shared, 1 + 31) << ::testing::PrintToString(step_tokens);
  EXPECT_GT(largest_shared, 1 + 16) << "chunks above the floor fit too: " << ::testing::PrintToString(step_tokens);
}

TEST_F(SchedulerTest, ExpiredDeadlineEndsTheRequest) {
  Outcome outcome;
  testing::Notification done;
  SchedulerRequest request = Greedy(0, "XL", 100);
  request.deadline = absl::Now() - absl::Milliseconds(1);
  Start(std::move(request), &outcome, &done);
  done.WaitForNotification();
  EXPECT_EQ(outcome.result.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(engine_->kv_pool().used_blocks(), 0);
}

TEST_F(SchedulerTest, BadRequestsFailAtSubmission) {
  auto submit = [&](SchedulerRequest request) { return scheduler_->Submit(std::move(request), {}).status(); };
  SchedulerRequest request = Greedy(0, "XL");
  request.prompt.push_back(500);
  EXPECT_EQ(submit(request).message(), "token id 500 outside [0, 128)");
  request = Greedy(0, "XL", 200);
  EXPECT_EQ(submit(request).message(),
            "prompt + max_new_tokens = 220 tokens exceeds the model's max_position_embeddings 128");
  request = Greedy(0, "XL");
  request.sampling.top_p = 2.0f;
  EXPECT_EQ(submit(request).message(), "top_p = 2 outside (0, 1]");
  request = Greedy(0, "XL");
  request.stop_sequences = {""};
  EXPECT_EQ(submit(request).message(), "stop_sequences: an entry is empty");
  request = Greedy(0, "XL");
  request.prompt.clear();
  EXPECT_EQ(submit(request).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SchedulerTest, ScoringReturnsTheContinuationLogProbabilities) {
  SchedulerRequest request = Greedy(0, "M");
  request.continuation = {5, 9, 14};
  Outcome outcome;
  testing::Notification done;
  Start(request, &outcome, &done);
  done.WaitForNotification();
  ASSERT_TRUE(outcome.result.status.ok()) << outcome.result.status;
  ASSERT_EQ(outcome.result.continuation_logprobs.size(), 3u);
  // The same numbers from a direct engine run.
  auto sequence = engine_->NewSequence(*SubmodelSpec::Parse(model_->config(), "M"));
  std::vector<int32_t> all = request.prompt;
  all.insert(all.end(), request.continuation.begin(), request.continuation.end());
  StepInput input{sequence.get(), all, /*all_logits=*/true};
  const std::vector<float> logits = *engine_->Step({&input, 1});
  const int64_t vocab = model_->config().vocab_size;
  for (size_t i = 0; i < 3; ++i) {
    const size_t row = request.prompt.size() - 1 + i;
    EXPECT_NEAR(outcome.result.continuation_logprobs[i],
                LogProbability(absl::MakeConstSpan(logits).subspan(row * vocab, vocab), request.continuation[i]), 1e-4);
  }
}

TEST_F(SchedulerTest, DrainFinishesInFlightWorkThenRefuses) {
  Outcome outcome;
  testing::Notification done;
  Start(Greedy(0, "S", 8), &outcome, &done);
  scheduler_->Drain(absl::Seconds(30));
  EXPECT_TRUE(done.HasBeenNotified());
  EXPECT_TRUE(outcome.result.status.ok()) << outcome.result.status;
  EXPECT_EQ(scheduler_->Submit(Greedy(0, "S"), {}).status().code(), absl::StatusCode::kUnavailable);
}

// The server stops admitting before its health turns NOT_SERVING, while the
// request in flight keeps running to its end.
TEST_F(SchedulerTest, StopAdmittingRefusesAtOnceAndLetsRunningWorkFinish) {
  Outcome outcome;
  testing::Notification done;
  Start(Greedy(0, "S", 8), &outcome, &done);
  scheduler_->StopAdmitting();
  EXPECT_EQ(scheduler_->Submit(Greedy(0, "S"), {}).status().code(), absl::StatusCode::kUnavailable);
  done.WaitForNotification();
  EXPECT_TRUE(outcome.result.status.ok()) << outcome.result.status;
}

}  // namespace
}  // namespace matformer
