// matformer-loadgen: load test of matformer-server by latency tier.
//
//   matformer-loadgen --target=127.0.0.1:50051 --mix=deploy/loadgen/mix.json --rate=20 --duration_s=30
//   matformer-loadgen --mode=closed --concurrency=8 --duration_s=30
//   matformer-loadgen --sweep_rates=5,10,20,40 --json_out=sweep.json
//
// Every request is a GenerateStream call (so the time to the first token is
// seen by the client); its tier is drawn from the mix, its prompt is a window
// of the model's held-out text (tokenized by the server once at start), and
// its budget travels as the tier name or as the gRPC deadline. Requests sent
// during the warm-up are waited for but not reported. After the run the
// requests still in flight get --drain_s to finish; the rest are cancelled and
// reported as UNFINISHED_AT_END, so every request sent is accounted for.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "matformer/v1/matformer.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tools/loadgen/mix.h"
#include "tools/loadgen/report.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Server address host:port (loopback)");
ABSL_FLAG(std::string, mix, "deploy/loadgen/mix.json", "Tier mix (JSON; see tools/loadgen/mix.h)");
ABSL_FLAG(std::string, prompts, "models/default/heldout.txt", "Text the prompts are drawn from");
ABSL_FLAG(std::string, mode, "open", "open: arrivals at --rate regardless of replies; closed: --concurrency in flight");
ABSL_FLAG(std::string, arrivals, "poisson", "Open loop: poisson or constant inter-arrival times");
ABSL_FLAG(double, rate, 10, "Open loop: requests per second, (0, 10000]");
ABSL_FLAG(int, concurrency, 4, "Closed loop: requests in flight, 1..10000");
ABSL_FLAG(double, duration_s, 30, "Measured seconds per run (after the warm-up), (0, 86400]");
ABSL_FLAG(double, warmup_s, 3, "Seconds of load before measuring, [0, 3600]");
ABSL_FLAG(double, drain_s, 15, "After a run, seconds to wait for replies in flight before cancelling them, [0, 3600]");
ABSL_FLAG(std::vector<std::string>, sweep_rates, {},
          "Open loop: run once per rate (req/s, ascending) and report the highest rate at which every tier "
          "keeps --sweep_attainment");
ABSL_FLAG(double, sweep_attainment, 0.99, "Sweep: the share of requests that must finish inside budget, per tier");
ABSL_FLAG(uint64_t, seed, 1, "Seed of arrivals, tiers and prompts");
ABSL_FLAG(std::string, json_out, "", "Also write the report as JSON to this file");
ABSL_FLAG(bool, progress, true, "Print progress to stderr once a second");

namespace matformer::loadgen {
namespace {

namespace v1 = ::matformer::v1;

constexpr char kUnfinished[] = "UNFINISHED_AT_END";

struct Options {
  std::string target, mix_path, prompts_path, mode, arrivals, json_out;
  double rate = 0, duration_s = 0, warmup_s = 0, drain_s = 0, sweep_attainment = 0;
  int concurrency = 0;
  std::vector<double> sweep_rates;
  uint64_t seed = 0;
  bool progress = true;
};

absl::Status RangeError(const std::string& flag, const std::string& limit) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": must be ", limit));
}

absl::StatusOr<Options> ReadOptions() {
  Options o{.target = absl::GetFlag(FLAGS_target),
            .mix_path = absl::GetFlag(FLAGS_mix),
            .prompts_path = absl::GetFlag(FLAGS_prompts),
            .mode = absl::GetFlag(FLAGS_mode),
            .arrivals = absl::GetFlag(FLAGS_arrivals),
            .json_out = absl::GetFlag(FLAGS_json_out),
            .rate = absl::GetFlag(FLAGS_rate),
            .duration_s = absl::GetFlag(FLAGS_duration_s),
            .warmup_s = absl::GetFlag(FLAGS_warmup_s),
            .drain_s = absl::GetFlag(FLAGS_drain_s),
            .sweep_attainment = absl::GetFlag(FLAGS_sweep_attainment),
            .concurrency = absl::GetFlag(FLAGS_concurrency),
            .sweep_rates = {},
            .seed = absl::GetFlag(FLAGS_seed),
            .progress = absl::GetFlag(FLAGS_progress)};
  if (o.mode != "open" && o.mode != "closed") return RangeError("mode", "open or closed");
  if (o.arrivals != "poisson" && o.arrivals != "constant") return RangeError("arrivals", "poisson or constant");
  if (!(o.rate > 0 && o.rate <= 10000)) return RangeError("rate", "in (0, 10000]");
  if (o.concurrency < 1 || o.concurrency > 10000) return RangeError("concurrency", "in [1, 10000]");
  if (!(o.duration_s > 0 && o.duration_s <= 86400)) return RangeError("duration_s", "in (0, 86400]");
  if (!(o.warmup_s >= 0 && o.warmup_s <= 3600)) return RangeError("warmup_s", "in [0, 3600]");
  if (!(o.drain_s >= 0 && o.drain_s <= 3600)) return RangeError("drain_s", "in [0, 3600]");
  if (!(o.sweep_attainment > 0 && o.sweep_attainment <= 1)) return RangeError("sweep_attainment", "in (0, 1]");
  for (const std::string& text : absl::GetFlag(FLAGS_sweep_rates)) {
    double rate = 0;
    if (!absl::SimpleAtod(text, &rate) || !(rate > 0 && rate <= 10000) ||
        (!o.sweep_rates.empty() && rate <= o.sweep_rates.back())) {
      return RangeError("sweep_rates", absl::StrCat("ascending rates in (0, 10000]; got '", text, "'"));
    }
    o.sweep_rates.push_back(rate);
  }
  if (!o.sweep_rates.empty() && o.mode != "open") return RangeError("sweep_rates", "used with --mode=open");
  return o;
}

absl::Status FromGrpc(const grpc::Status& status, const std::string& what) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(what, ": ", status.error_message()));
}

// What the load generator needs to know about the server.
struct ServerFacts {
  std::string policy;
  int bos_token_id = 0;
  absl::flat_hash_map<std::string, absl::Duration> tier_budgets;
  std::vector<int32_t> text_tokens;  // the prompt text, tokenized, without BOS
};

absl::StatusOr<ServerFacts> AskServer(v1::MatFormer::Stub& stub, const std::string& prompts_path) {
  ServerFacts facts;
  v1::ModelInfo info;
  {
    // A server that is still loading or calibrating is waited for.
    grpc::ClientContext context;
    context.set_wait_for_ready(true);
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    grpc::Status status = stub.GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
    if (!status.ok()) return FromGrpc(status, "GetModelInfo");
  }
  facts.policy = info.policy();
  facts.bos_token_id = info.architecture().bos_token_id();
  for (const v1::Tier& tier : info.tiers()) {
    facts.tier_budgets[tier.name()] = absl::Seconds(tier.latency_budget().seconds()) +
                                      absl::Nanoseconds(tier.latency_budget().nanos());
  }
  std::ifstream file(prompts_path);
  if (!file) return absl::NotFoundError(absl::StrCat("--prompts=", prompts_path, ": cannot open"));
  // Tokenized a paragraph at a time: a Tokenize request is bounded by the
  // server's message and prompt limits.
  std::string line, paragraph;
  auto flush = [&]() -> absl::Status {
    if (paragraph.empty()) return absl::OkStatus();
    v1::TokenizeRequest request;
    request.set_text(paragraph);
    v1::TokenizeResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    grpc::Status status = stub.Tokenize(&context, request, &response);
    if (!status.ok()) return FromGrpc(status, "Tokenize");
    for (int32_t id : response.token_ids()) {
      if (id != facts.bos_token_id) facts.text_tokens.push_back(id);
    }
    paragraph.clear();
    return absl::OkStatus();
  };
  while (std::getline(file, line)) {
    absl::StrAppend(&paragraph, line, "\n");
    if (paragraph.size() > 2000) {
      if (absl::Status s = flush(); !s.ok()) return s;
    }
  }
  if (absl::Status s = flush(); !s.ok()) return s;
  if (facts.text_tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("--prompts=", prompts_path, ": empty"));
  return facts;
}

// The budget each tier of the mix carries, checked against the server's tiers.
absl::StatusOr<std::vector<absl::Duration>> ResolveBudgets(const Mix& mix, const ServerFacts& facts) {
  std::vector<absl::Duration> budgets;
  for (const TierMix& tier : mix.tiers) {
    auto known = facts.tier_budgets.find(tier.name);
    if (tier.budget_via == BudgetVia::kTier && known == facts.tier_budgets.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("mix tier '", tier.name, "' sends its tier name, but the server has no such tier"));
    }
    if (tier.budget_via == BudgetVia::kTier && tier.budget.has_value() && *tier.budget != known->second) {
      return absl::InvalidArgumentError(absl::StrCat("mix tier '", tier.name, "': budget_ms disagrees with the server's ",
                                                     absl::FormatDuration(known->second)));
    }
    if (tier.budget.has_value()) {
      budgets.push_back(*tier.budget);
    } else if (known != facts.tier_budgets.end()) {
      budgets.push_back(known->second);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("mix tier '", tier.name,
                                                     "' sends a deadline: it needs budget_ms (the server has no "
                                                     "tier of that name)"));
    }
    const int64_t longest_prompt = tier.max_prompt_tokens + 1;
    if (longest_prompt > static_cast<int64_t>(facts.text_tokens.size())) {
      return absl::InvalidArgumentError(absl::StrCat("mix tier '", tier.name, "': prompts of ", tier.max_prompt_tokens,
                                                     " tokens, but the prompt text has only ",
                                                     facts.text_tokens.size()));
    }
  }
  return budgets;
}

double Seconds(const google::protobuf::Duration& d) { return static_cast<double>(d.seconds()) + d.nanos() * 1e-9; }

class Run;

// One GenerateStream call; deletes itself when done.
class Call final : public grpc::ClientReadReactor<v1::GenerateStreamResponse> {
 public:
  Call(Run* run, std::string tier, double budget_s, bool measured) : run_(run), measured_(measured) {
    record_.tier = std::move(tier);
    record_.budget_s = budget_s;
  }
  void Start(v1::MatFormer::Stub& stub, const v1::GenerateRequest& request, std::optional<absl::Duration> deadline);
  void Cancel() { context_.TryCancel(); }
  void MarkAbandoned() { abandoned_ = true; }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (!record_.first_token_s.has_value() && response_.token_ids_size() > 0) {
      record_.first_token_s = absl::ToDoubleSeconds(absl::Now() - sent_);
    }
    if (response_.has_summary()) {
      const v1::GenerateResponse& summary = response_.summary();
      record_.tokens = summary.token_ids_size();
      record_.active_params = summary.submodel().active_params();
      if (summary.submodel().has_expected_loss()) record_.expected_loss = summary.submodel().expected_loss();
      record_.server_total_s = Seconds(summary.timings().total());
      record_.predicted_total_s = Seconds(summary.timings().predicted_total());
    }
    StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override;

 private:
  Run* run_;
  bool measured_;
  bool abandoned_ = false;  // cancelled by the load generator at the end of a run
  grpc::ClientContext context_;
  v1::GenerateRequest request_;
  v1::GenerateStreamResponse response_;
  absl::Time sent_;
  RequestRecord record_;
};

// One run at one load: issues requests, collects what comes back.
class Run {
 public:
  Run(const Options& options, const Mix& mix, const std::vector<absl::Duration>& budgets, const ServerFacts& facts,
      v1::MatFormer::Stub& stub, double rate, uint64_t seed)
      : options_(options), mix_(mix), budgets_(budgets), facts_(facts), stub_(stub), rate_(rate), rng_(seed) {
    std::vector<double> shares;
    for (const TierMix& tier : mix.tiers) shares.push_back(tier.share);
    pick_tier_ = std::discrete_distribution<size_t>(shares.begin(), shares.end());
  }

  // Runs warm-up + measurement + drain; returns the measured records.
  std::vector<RequestRecord> Execute() {
    const absl::Time start = absl::Now();
    measure_from_ = start + absl::Seconds(options_.warmup_s);
    const absl::Time end = measure_from_ + absl::Seconds(options_.duration_s);
    absl::Time next_progress = start + absl::Seconds(1);
    std::exponential_distribution<double> gap(rate_);
    absl::Time next_arrival = start;
    while (true) {
      const absl::Time now = absl::Now();
      if (now >= end) break;
      if (options_.progress && now >= next_progress) {
        PrintProgress(now - start);
        next_progress += absl::Seconds(1);
      }
      if (options_.mode == "open") {
        if (now >= next_arrival) {
          Issue(now);
          next_arrival += absl::Seconds(options_.arrivals == "poisson" ? gap(rng_) : 1.0 / rate_);
          continue;
        }
        absl::SleepFor(std::min({next_arrival, next_progress, end}) - now);
      } else {
        bool slot_free = false;
        {
          absl::MutexLock lock(&mu_);
          const int limit = options_.concurrency;
          auto below_limit = [this, limit]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
            return static_cast<int>(in_flight_.size()) < limit;
          };
          slot_free = mu_.AwaitWithDeadline(absl::Condition(&below_limit), std::min(next_progress, end));
        }
        if (slot_free) Issue(absl::Now());
      }
    }
    // Drain: wait for replies, then cancel what is left and wait for that.
    const absl::Time drain_end = absl::Now() + absl::Seconds(options_.drain_s);
    auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return in_flight_.empty(); };
    while (true) {
      bool done = false;
      {
        absl::MutexLock lock(&mu_);
        done = mu_.AwaitWithDeadline(absl::Condition(&idle), std::min(drain_end, absl::Now() + absl::Seconds(1)));
      }
      if (done || absl::Now() >= drain_end) break;
      if (options_.progress) PrintProgress(absl::Now() - start);
    }
    {
      absl::MutexLock lock(&mu_);
      for (Call* call : in_flight_) {
        call->MarkAbandoned();
        call->Cancel();
      }
      mu_.Await(absl::Condition(&idle));
    }
    if (options_.progress) PrintProgress(absl::Now() - start);
    absl::MutexLock lock(&mu_);
    return std::move(records_);
  }
  int64_t sent_including_warmup() {
    absl::MutexLock lock(&mu_);
    return sent_;
  }

  void Finished(Call* call, RequestRecord record, bool measured) {
    absl::MutexLock lock(&mu_);
    in_flight_.erase(call);
    ++done_;
    if (record.status == "OK") {
      ++ok_;
    } else {
      ++errors_;
    }
    if (measured) records_.push_back(std::move(record));
  }

 private:
  void Issue(absl::Time now) {
    const size_t index = pick_tier_(rng_);
    const TierMix& tier = mix_.tiers[index];
    v1::GenerateRequest request;
    std::uniform_int_distribution<int> length(tier.min_prompt_tokens, tier.max_prompt_tokens);
    const int prompt_tokens = length(rng_);
    std::uniform_int_distribution<size_t> offset(0, facts_.text_tokens.size() - prompt_tokens);
    const size_t from = offset(rng_);
    auto* ids = request.mutable_token_ids()->mutable_ids();
    ids->Add(facts_.bos_token_id);
    ids->Add(facts_.text_tokens.begin() + from, facts_.text_tokens.begin() + from + prompt_tokens - 1);
    request.set_max_new_tokens(tier.max_new_tokens);
    std::optional<absl::Duration> deadline;
    if (tier.budget_via == BudgetVia::kTier) {
      request.set_tier(tier.name);
    } else {
      deadline = budgets_[index];
    }
    auto* call = new Call(this, tier.name, absl::ToDoubleSeconds(budgets_[index]), now >= measure_from_);
    {
      absl::MutexLock lock(&mu_);
      in_flight_.insert(call);
      ++sent_;
    }
    call->Start(stub_, request, deadline);
  }

  void PrintProgress(absl::Duration elapsed) {
    absl::MutexLock lock(&mu_);
    std::fprintf(stderr, "[%6.1fs] rate %.1f/s: sent %lld, done %lld (ok %lld, errors %lld), in flight %zu\n",
                 absl::ToDoubleSeconds(elapsed), rate_, static_cast<long long>(sent_), static_cast<long long>(done_),
                 static_cast<long long>(ok_), static_cast<long long>(errors_), in_flight_.size());
  }

  const Options& options_;
  const Mix& mix_;
  const std::vector<absl::Duration>& budgets_;
  const ServerFacts& facts_;
  v1::MatFormer::Stub& stub_;
  const double rate_;
  std::mt19937_64 rng_;
  std::discrete_distribution<size_t> pick_tier_;
  absl::Time measure_from_;

  absl::Mutex mu_;
  absl::flat_hash_set<Call*> in_flight_ ABSL_GUARDED_BY(mu_);
  std::vector<RequestRecord> records_ ABSL_GUARDED_BY(mu_);
  int64_t sent_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t ok_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t errors_ ABSL_GUARDED_BY(mu_) = 0;
};

void Call::Start(v1::MatFormer::Stub& stub, const v1::GenerateRequest& request,
                 std::optional<absl::Duration> deadline) {
  request_ = request;
  sent_ = absl::Now();
  if (deadline.has_value()) context_.set_deadline(absl::ToChronoTime(sent_ + *deadline));
  stub.async()->GenerateStream(&context_, &request_, this);
  StartRead(&response_);
  StartCall();
}

void Call::OnDone(const grpc::Status& status) {
  record_.latency_s = absl::ToDoubleSeconds(absl::Now() - sent_);
  record_.status = abandoned_ && status.error_code() == grpc::StatusCode::CANCELLED
                       ? kUnfinished
                       : absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
  run_->Finished(this, std::move(record_), measured_);
  delete this;
}

nlohmann::json RunJson(const Options& options, double rate, const Report& report, int64_t sent_including_warmup) {
  nlohmann::json json = ToJson(report);
  json["sent_including_warmup"] = sent_including_warmup;
  json["mode"] = options.mode;
  if (options.mode == "open") {
    json["rate"] = rate;
    json["arrivals"] = options.arrivals;
  } else {
    json["concurrency"] = options.concurrency;
  }
  return json;
}

bool MeetsTarget(const Report& report, double attainment) {
  return std::all_of(report.tiers.begin(), report.tiers.end(),
                     [attainment](const TierReport& t) { return t.attainment >= attainment; });
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Load test of matformer-server by latency tier. Usage: matformer-loadgen [--target=127.0.0.1:50051] "
      "[--mix=deploy/loadgen/mix.json] [--mode=open --rate=10 | --mode=closed --concurrency=4] [--duration_s=30] "
      "[--sweep_rates=5,10,20] [--json_out=FILE]");
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<Options> options = ReadOptions();
  if (!options.ok()) {
    std::fprintf(stderr, "matformer-loadgen: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<Mix> mix = LoadMix(options->mix_path);
  if (!mix.ok()) {
    std::fprintf(stderr, "matformer-loadgen: %s\n", std::string(mix.status().message()).c_str());
    return 2;
  }
  grpc::ChannelArguments channel_args;
  // Enough concurrent streams on one connection for the highest loads here.
  channel_args.SetInt(GRPC_ARG_MAX_CONCURRENT_STREAMS, 10000);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options->target, grpc::InsecureChannelCredentials(), channel_args);
  auto stub = v1::MatFormer::NewStub(channel);
  absl::StatusOr<ServerFacts> facts = AskServer(*stub, options->prompts_path);
  if (!facts.ok()) {
    std::fprintf(stderr, "matformer-loadgen: %s: %s\n", options->target.c_str(),
                 std::string(facts.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<std::vector<absl::Duration>> budgets = ResolveBudgets(*mix, *facts);
  if (!budgets.ok()) {
    std::fprintf(stderr, "matformer-loadgen: %s\n", std::string(budgets.status().message()).c_str());
    return 2;
  }

  const std::vector<double> rates = options->sweep_rates.empty() ? std::vector<double>{options->rate}
                                                                 : options->sweep_rates;
  nlohmann::json runs = nlohmann::json::array();
  std::optional<double> best_rate;
  std::string sweep_table = absl::StrFormat("%8s", "rate");
  for (const TierMix& tier : mix->tiers) absl::StrAppendFormat(&sweep_table, " %12s", tier.name);
  absl::StrAppendFormat(&sweep_table, " %10s %8s\n", "goodput", "meets");
  for (size_t i = 0; i < rates.size(); ++i) {
    Run run(*options, *mix, *budgets, *facts, *stub, rates[i], options->seed + i);
    std::vector<std::string> tier_order;
    for (const TierMix& tier : mix->tiers) tier_order.push_back(tier.name);
    const Report report = BuildReport(run.Execute(), options->duration_s, tier_order);
    std::printf("\n== policy %s, %s ==\n%s", facts->policy.c_str(),
                options->mode == "open" ? absl::StrFormat("%.2f req/s %s", rates[i], options->arrivals).c_str()
                                        : absl::StrFormat("closed loop, %d in flight", options->concurrency).c_str(),
                FormatTable(report).c_str());
    runs.push_back(RunJson(*options, rates[i], report, run.sent_including_warmup()));
    const bool meets = MeetsTarget(report, options->sweep_attainment);
    if (meets) best_rate = rates[i];
    absl::StrAppendFormat(&sweep_table, "%8.2f", rates[i]);
    for (const TierReport& t : report.tiers) absl::StrAppendFormat(&sweep_table, " %11.1f%%", 100 * t.attainment);
    absl::StrAppendFormat(&sweep_table, " %10.2f %8s\n", report.total.goodput_rps, meets ? "yes" : "no");
  }
  nlohmann::json out = {{"target", options->target},  {"policy", facts->policy}, {"mix", options->mix_path},
                        {"warmup_s", options->warmup_s}, {"duration_s", options->duration_s}, {"runs", runs}};
  if (!options->sweep_rates.empty()) {
    std::printf("\n== sweep: SLO attainment by tier (target %.1f%% in every tier) ==\n%s", 100 * options->sweep_attainment,
                sweep_table.c_str());
    std::printf("highest rate meeting the target: %s\n",
                best_rate.has_value() ? absl::StrFormat("%.2f req/s", *best_rate).c_str() : "none");
    out["sweep_attainment"] = options->sweep_attainment;
    out["max_rate_meeting_target"] = best_rate.has_value() ? nlohmann::json(*best_rate) : nlohmann::json(nullptr);
  }
  if (!options->json_out.empty()) {
    std::ofstream file(options->json_out);
    file << out.dump(2) << "\n";
    if (!file) {
      std::fprintf(stderr, "matformer-loadgen: --json_out=%s: cannot write\n", options->json_out.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace matformer::loadgen

int main(int argc, char** argv) { return matformer::loadgen::Main(argc, argv); }
