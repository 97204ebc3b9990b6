#include "core/plan/planner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/util/files.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace matformer {
namespace {

constexpr size_t kMaxQualityFileBytes = 16 << 20;

std::string Millis(absl::Duration duration) { return absl::StrFormat("%.1f ms", absl::ToDoubleMilliseconds(duration)); }

// Sorts best quality first: lower expected loss, then fewer parameters.
void SortBestFirst(std::vector<Candidate>& candidates) {
  std::stable_sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    if (a.expected_loss != b.expected_loss) return a.expected_loss < b.expected_loss;
    return a.spec.active_params() < b.spec.active_params();
  });
}

}  // namespace

absl::StatusOr<std::vector<Candidate>> LoadCandidates(const ModelConfig& config, const std::string& model_dir) {
  const std::string path = model_dir + "/quality.json";
  const absl::StatusOr<std::string> text = ReadBoundedFile(path, kMaxQualityFileBytes, absl::StrCat(path, ": "));
  std::vector<Candidate> candidates;
  if (absl::IsNotFound(text.status())) {
    // No measured quality: rank the uniform granularities by size, biggest first.
    for (auto it = config.granularities.rbegin(); it != config.granularities.rend(); ++it) {
      MF_ASSIGN_OR_RETURN(SubmodelSpec spec, SubmodelSpec::Uniform(config, absl::StrCat(*it)));
      candidates.push_back({spec, -static_cast<double>(spec.active_params()), /*measured=*/false, /*label=*/""});
    }
    return candidates;
  }
  if (!text.ok()) return text.status();
  const nlohmann::json json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object() || !json.contains("specs") || !json["specs"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected an object with a \"specs\" array"));
  }
  const nlohmann::json& specs = json["specs"];
  for (size_t i = 0; i < specs.size(); ++i) {
    const nlohmann::json& entry = specs[i];
    const std::string where = absl::StrCat(path, ": specs[", i, "]");
    if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() || !entry.contains("loss") ||
        !entry["loss"].is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": needs a string \"name\" and a number \"loss\""));
    }
    const double loss = entry["loss"].get<double>();
    if (!std::isfinite(loss) || loss < 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".loss = ", loss, " must be finite and >= 0"));
    }
    absl::StatusOr<SubmodelSpec> spec = SubmodelSpec::Parse(config, entry["name"].get<std::string>());
    if (!spec.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ".name: ", spec.status().message()));
    candidates.push_back({*std::move(spec), loss, /*measured=*/true, /*label=*/""});
  }
  if (candidates.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": \"specs\" is empty"));
  SortBestFirst(candidates);
  return candidates;
}

LatencyModel::LatencyModel(std::vector<double> fixed_seconds, std::vector<double> per_row_seconds, int num_layers)
    : fixed_(std::move(fixed_seconds)), per_row_(std::move(per_row_seconds)), num_layers_(num_layers) {}

LatencyModel::LatencyModel(const LatencyModel& other)
    : fixed_(other.fixed_),
      per_row_(other.per_row_),
      num_layers_(other.num_layers_),
      learning_(other.learning_),
      correction_(other.correction()) {}

absl::StatusOr<LatencyModel> LatencyModel::Load(const ModelConfig& config, const std::string& path) {
  MF_ASSIGN_OR_RETURN(const std::string text, ReadBoundedFile(path, kMaxQualityFileBytes, absl::StrCat(path, ": ")));
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object() || !json.contains("granularities") ||
      !json["granularities"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected an object with a \"granularities\" object"));
  }
  const nlohmann::json& entries = json["granularities"];
  std::vector<double> fixed, per_row;
  for (const std::string& name : config.granularity_names) {
    const std::string where = absl::StrCat(path, ": granularities.", name);
    if (!entries.contains(name)) return absl::InvalidArgumentError(absl::StrCat(where, ": missing"));
    const nlohmann::json& entry = entries[name];
    for (const char* key : {"fixed_ms", "per_row_ms"}) {
      if (!entry.is_object() || !entry.contains(key) || !entry[key].is_number() ||
          !(entry[key].get<double>() >= 0 && entry[key].get<double>() <= 60000)) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".", key, ": must be a number in [0, 60000]"));
      }
    }
    fixed.push_back(std::max(entry["fixed_ms"].get<double>() * 1e-3, 1e-6));
    per_row.push_back(entry["per_row_ms"].get<double>() * 1e-3);
  }
  for (const auto& [name, entry] : entries.items()) {
    if (std::find(config.granularity_names.begin(), config.granularity_names.end(), name) ==
        config.granularity_names.end()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": granularities.", name, ": not a granularity of the model"));
    }
  }
  return LatencyModel(std::move(fixed), std::move(per_row), config.num_layers);
}

absl::Status LatencyModel::Save(const ModelConfig& config, const std::string& path) const {
  nlohmann::json granularities = nlohmann::json::object();
  for (size_t g = 0; g < fixed_.size(); ++g) {
    granularities[config.granularity_names[g]] = {{"fixed_ms", fixed_[g] * 1e3}, {"per_row_ms", per_row_[g] * 1e3}};
  }
  std::ofstream file(path);
  file << nlohmann::json{{"granularities", granularities}}.dump(2) << "\n";
  if (!file) return absl::InternalError(absl::StrCat(path, ": cannot write"));
  return absl::OkStatus();
}

std::string LatencyModel::Describe(const ModelConfig& config) const {
  std::string text;
  for (size_t g = 0; g < fixed_.size(); ++g) {
    absl::StrAppendFormat(&text, "%s%s %.3f ms + %.4f ms/row", g == 0 ? "" : "; ", config.granularity_names[g],
                          fixed_[g] * 1e3, per_row_[g] * 1e3);
  }
  return text;
}

double LatencyModel::correction() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return correction_;
}

absl::StatusOr<LatencyModel> LatencyModel::Calibrate(ServingEngine& engine) {
  const ModelConfig& config = engine.config();
  // Row counts of typical steps: lone decode, a decode batch, a prefill chunk.
  const int kRowCounts[] = {1, 8, 64};
  constexpr int kRepeats = 5;
  std::vector<double> fixed, per_row;
  for (int64_t width : config.granularities) {
    MF_ASSIGN_OR_RETURN(SubmodelSpec spec, SubmodelSpec::Uniform(config, absl::StrCat(width)));
    std::vector<double> rows, seconds;
    for (int row_count : kRowCounts) {
      std::vector<double> samples;
      for (int repeat = 0; repeat <= kRepeats; ++repeat) {  // the first run warms up
        std::vector<std::unique_ptr<Sequence>> sequences;
        std::vector<std::vector<int32_t>> tokens;
        std::vector<StepInput> inputs;
        // Decode-like rows: one token each for separate sequences, up to 8;
        // beyond that one sequence takes a prefill chunk.
        const int sequences_count = row_count <= 8 ? row_count : 1;
        const int tokens_each = row_count / sequences_count;
        for (int s = 0; s < sequences_count; ++s) {
          sequences.push_back(engine.NewSequence(spec));
          tokens.emplace_back(tokens_each, static_cast<int32_t>(3 + s % 50));
        }
        for (int s = 0; s < sequences_count; ++s) inputs.push_back({sequences[s].get(), tokens[s]});
        const auto start = std::chrono::steady_clock::now();
        MF_RETURN_IF_ERROR(engine.Step(inputs).status());
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (repeat > 0) samples.push_back(elapsed);
      }
      // The fastest run: on a shared machine the others measure whoever else
      // had the cores; the online corrections scale up to what serving sees.
      rows.push_back(row_count);
      seconds.push_back(*std::min_element(samples.begin(), samples.end()));
    }
    // Least-squares line through (rows, seconds).
    const double n = static_cast<double>(rows.size());
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      sx += rows[i];
      sy += seconds[i];
      sxx += rows[i] * rows[i];
      sxy += rows[i] * seconds[i];
    }
    const double slope = std::max(0.0, (n * sxy - sx * sy) / (n * sxx - sx * sx));
    const double intercept = std::max(seconds[0] - slope, (sy - slope * sx) / n);
    fixed.push_back(std::max(intercept, 1e-6));
    per_row.push_back(slope);
  }
  return LatencyModel(std::move(fixed), std::move(per_row), config.num_layers);
}

double LatencyModel::RawSeconds(const std::vector<const SubmodelSpec*>& row_specs, const ModelConfig& config) const {
  if (row_specs.empty()) return 0.0;
  double total = 0.0;
  for (int layer = 0; layer < num_layers_; ++layer) {
    // Weights stream once per step at the widest width any row uses here;
    // every row then pays for its own width.
    int widest = -1;
    double rows_cost = 0.0;
    for (const SubmodelSpec* spec : row_specs) {
      if (spec->skipped(layer)) continue;
      const int index = config.GranularityIndex(spec->ffn_width(layer));
      widest = std::max(widest, index);
      rows_cost += per_row_[index];
    }
    if (widest >= 0) total += (fixed_[widest] + rows_cost) / num_layers_;
  }
  return total;
}

absl::Duration LatencyModel::StepTime(const std::vector<const SubmodelSpec*>& row_specs,
                                      const ModelConfig& config) const {
  return absl::Seconds(RawSeconds(row_specs, config) * correction());
}

void LatencyModel::Observe(const std::vector<const SubmodelSpec*>& row_specs, const ModelConfig& config,
                           absl::Duration actual) {
  if (!learning_) return;
  const double predicted = RawSeconds(row_specs, config);
  if (predicted <= 0.0) return;
  const double ratio = std::clamp(absl::ToDoubleSeconds(actual) / predicted, 0.25, 4.0);
  std::lock_guard<std::mutex> lock(mutex_);
  correction_ = 0.9 * correction_ + 0.1 * ratio;
}

RequestCorrection::Factors RequestCorrection::factors() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return factors_;
}

void RequestCorrection::Observe(absl::Duration uncorrected, absl::Duration actual) {
  if (!learning_) return;
  const double predicted = absl::ToDoubleSeconds(uncorrected);
  if (predicted <= 0.0) return;
  // Clamped so that one stalled request (a descheduled process) cannot swing it.
  const double ratio = std::clamp(absl::ToDoubleSeconds(actual) / predicted, 0.25, 10.0);
  constexpr double kWeight = 0.1;
  std::lock_guard<std::mutex> lock(mutex_);
  factors_.deviation = (1 - kWeight) * factors_.deviation + kWeight * std::abs(ratio - factors_.mean);
  factors_.mean = (1 - kWeight) * factors_.mean + kWeight * ratio;
}

Planner::Planner(const ModelConfig& config, std::vector<Candidate> candidates, LatencyModel latency,
                 PlanPolicy policy, std::optional<SubmodelSpec> fixed_spec, OverBudget over_budget, int prefill_chunk)
    : config_(config),
      candidates_(std::move(candidates)),
      latency_(std::move(latency)),
      policy_(policy),
      fixed_spec_(std::move(fixed_spec)),
      over_budget_(over_budget),
      prefill_chunk_(std::max(1, prefill_chunk)) {}

absl::Duration Planner::PredictTotal(const SubmodelSpec& spec, const PlanRequest& request,
                                     const LoadSnapshot& load) const {
  std::vector<const SubmodelSpec*> rows = load.decode_rows;
  // Prefill: the prompt in chunks, each step shared with the running decode rows.
  int64_t remaining = request.prompt_tokens;
  absl::Duration prefill = absl::ZeroDuration();
  while (remaining > 0) {
    const int64_t chunk = std::min<int64_t>(remaining, prefill_chunk_);
    std::vector<const SubmodelSpec*> step = rows;
    step.insert(step.end(), chunk, &spec);
    prefill += latency_.StepTime(step, config_);
    remaining -= chunk;
  }
  rows.push_back(&spec);
  // The prefill step yields the first token; each further token is one decode step.
  const absl::Duration decode = latency_.StepTime(rows, config_) * std::max(0, request.max_new_tokens - 1);
  return load.queue_wait + prefill + decode;
}

bool Planner::KeepsCommitments(const SubmodelSpec& spec, const PlanRequest& request, const LoadSnapshot& load) const {
  if (load.commitments.empty()) return true;
  const double margin = correction_.factors().conservative();
  std::vector<const SubmodelSpec*> rows = load.decode_rows;
  const absl::Duration base_step = latency_.StepTime(rows, config_);
  rows.push_back(&spec);
  const absl::Duration added_per_decode_step = latency_.StepTime(rows, config_) - base_step;
  // The newcomer's prefill chunks land in steps the others share.
  PlanRequest prefill_only = request;
  prefill_only.max_new_tokens = 1;
  LoadSnapshot without_queue = load;
  without_queue.queue_wait = absl::ZeroDuration();
  const int64_t chunks = (request.prompt_tokens + prefill_chunk_ - 1) / prefill_chunk_;
  const absl::Duration added_prefill = PredictTotal(spec, prefill_only, without_queue) - base_step * chunks;
  for (const Commitment& c : load.commitments) {
    const absl::Duration own = base_step * c.remaining_steps;
    // Already late without the newcomer: refusing it would not save this one.
    if (own * margin > c.time_left) continue;
    const int shared_decode_steps = std::min(c.remaining_steps, std::max(0, request.max_new_tokens - 1));
    const absl::Duration with_newcomer = own + added_prefill + added_per_decode_step * shared_decode_steps;
    if (with_newcomer * margin > c.time_left) return false;
  }
  return true;
}

absl::StatusOr<Plan> Planner::Choose(const PlanRequest& request, const LoadSnapshot& load) const {
  const RequestCorrection::Factors factors = correction_.factors();
  auto plan_for = [&](const Candidate& candidate) {
    Plan plan;
    plan.choice = candidate;
    plan.request_scale = factors.mean;
    const absl::Duration total = PredictTotal(candidate.spec, request, load);
    PlanRequest prefill_only = request;
    prefill_only.max_new_tokens = 1;
    const absl::Duration prefill = PredictTotal(candidate.spec, prefill_only, load) - load.queue_wait;
    plan.predicted_queue = load.queue_wait * factors.mean;
    plan.predicted_prefill = prefill * factors.mean;
    plan.predicted_decode = (total - load.queue_wait - prefill) * factors.mean;
    plan.fits_budget = !request.budget.has_value() || total * factors.conservative() <= *request.budget;
    return plan;
  };
  auto candidate_for = [&](const SubmodelSpec& spec) {
    for (const Candidate& candidate : candidates_) {
      if (candidate.spec == spec) return candidate;
    }
    return Candidate{spec, std::numeric_limits<double>::quiet_NaN(), /*measured=*/false, /*label=*/""};
  };
  // A pinned or fixed spec is served as asked; the plan still reports whether it fits.
  if (request.pinned.has_value()) return plan_for(candidate_for(*request.pinned));
  if (policy_ == PlanPolicy::kFixed) return plan_for(candidate_for(*fixed_spec_));

  std::vector<const Candidate*> allowed;
  for (const Candidate& candidate : candidates_) {
    if (!request.max_expected_loss.has_value() ||
        (candidate.measured && candidate.expected_loss <= *request.max_expected_loss)) {
      allowed.push_back(&candidate);
    }
  }
  if (allowed.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("max_expected_loss = ", *request.max_expected_loss,
                                                   " excludes every submodel (best expected loss ",
                                                   candidates_.front().expected_loss, ")"));
  }
  std::optional<Plan> fastest, fastest_fitting;
  for (const Candidate* candidate : allowed) {
    Plan plan = plan_for(*candidate);
    if (plan.fits_budget) {
      if (KeepsCommitments(candidate->spec, request, load)) return plan;
      if (!fastest_fitting.has_value() || plan.predicted_total() < fastest_fitting->predicted_total()) {
        fastest_fitting = plan;
      }
    }
    if (!fastest.has_value() || plan.predicted_total() < fastest->predicted_total()) fastest = plan;
  }
  if (fastest_fitting.has_value()) return *fastest_fitting;
  // The margin picks quality safely, but a request is refused only when even
  // the fastest candidate is expected (without margin) to miss its budget.
  if (over_budget_ == OverBudget::kServeSmallest || fastest->predicted_total() <= *request.budget) return *fastest;
  const Plan& best_fastest = *fastest;
  return absl::ResourceExhaustedError(absl::StrCat(
      "no submodel fits the latency budget of ", Millis(*request.budget), ": the fastest allowed (",
      best_fastest.choice.spec.name(), ", ", best_fastest.choice.spec.active_params(), " active params) needs ",
      Millis(best_fastest.predicted_total()), " (queue ", Millis(best_fastest.predicted_queue), ", prefill ",
      Millis(best_fastest.predicted_prefill), ", decode ", Millis(best_fastest.predicted_decode), ")"));
}

}  // namespace matformer
