// matformer-server: serves one MatFormer model over gRPC (matformer.v1.MatFormer,
// grpc.health.v1.Health, server reflection) with Prometheus metrics over HTTP.
// With no flags it serves models/default on 127.0.0.1:50051, metrics on
// 127.0.0.1:9464. SIGTERM / SIGINT drain it: health turns NOT_SERVING, new
// requests get UNAVAILABLE, running ones finish (up to --drain_timeout), exit 0.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/engine.h"
#include "core/gemma3n/serving.h"
#include "core/util/status_macros.h"
#include "core/model/weights.h"
#include "core/plan/planner.h"
#include "core/sched/scheduler.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/auth.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/options.h"
#include "server/service.h"
#include "server/tiers.h"
#include "server/tls.h"

namespace {

constexpr char kDefaultModelDir[] = "models/default";
constexpr char kDefaultTiers[] = "deploy/tiers.json";

}  // namespace

ABSL_FLAG(std::string, model_dir, kDefaultModelDir,
          "Model directory (config.json, model.safetensors, tokenizer.model, optional quality.json). The default "
          "is looked up from the working directory, then from the directories above the executable");
ABSL_FLAG(std::string, host, "127.0.0.1", "Address the gRPC and metrics endpoints listen on");
ABSL_FLAG(int, port, 50051, "gRPC port, 0..65535; 0 picks a free port, logged as 'listening on HOST:PORT'");
ABSL_FLAG(int, metrics_port, 9464,
          "Prometheus metrics port (GET /metrics), 0..65535; 0 picks a free port, logged as 'metrics on HOST:PORT'");
ABSL_FLAG(std::string, tiers, kDefaultTiers,
          "Tiers JSON file: {\"tiers\": [{\"name\", \"latency_budget_ms\", \"priority\"}]} (at most 32 tiers, "
          "budgets in (0, 1 h], priorities in [-100, 100]); the default is looked up like --model_dir's");
ABSL_FLAG(std::string, policy, "elastic",
          "elastic: the planner picks the best submodel that fits each request's budget; fixed:<spec>: every "
          "request not pinning a submodel runs <spec> (e.g. fixed:XL, fixed:S-S-M-M-L-XL)");
ABSL_FLAG(std::string, over_budget, "reject",
          "When no submodel fits a budget: reject (RESOURCE_EXHAUSTED) or serve_smallest (run the fastest)");
ABSL_FLAG(std::string, latency_model, "",
          "Latency model JSON to use instead of calibrating at start-up (see --write_latency_model); empty: calibrate");
ABSL_FLAG(std::string, write_latency_model, "", "Write the latency model used (calibrated or loaded) to this file");
ABSL_FLAG(bool, online_correction, true,
          "Refine the latency model from observed steps and requests; false plans from the model alone "
          "(reproducible choices, for tests and comparisons)");
ABSL_FLAG(int, engine_threads, -1,
          "OpenMP threads of the engine, -1..1024: -1 every core but one (left to gRPC; at least one; cores = "
          "OMP_NUM_THREADS, else the CPUs available, capped by a cgroup CPU quota), 0 OpenMP's default");
ABSL_FLAG(int, max_batch, 32, "Sequences per engine step, 1..1024");
ABSL_FLAG(int, max_queue, 256, "Requests waiting for a batch slot, 1..100000; beyond it RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, kv_blocks, 1024,
          "KV cache blocks of 16 tokens, 1..16777216; must hold one request of max_prompt_tokens + "
          "max_new_tokens_limit and fit in 3/4 of the machine's memory");
ABSL_FLAG(std::string, kv_dtype, "auto",
          "How the KV cache stores keys and values: auto (the model's weight dtype), f32, bf16 (half the "
          "memory and the bytes attention reads) or int8 (a quarter of f32 plus a scale per position and head; "
          "rounds keys and values to 1/254 of their largest element)");
ABSL_FLAG(int64_t, ple_cache_mb, 64, "PLE cache size in MiB, 0..65536 (0 disables it)");
ABSL_FLAG(int64_t, ffn_granule, 2048,
          "Gemma 3n checkpoints: FFN neurons per weight slab, 1..1048576; every slice width is a multiple of it "
          "(or the full width). 2048 is the step of the published slices");
ABSL_FLAG(std::string, slicing_table, "",
          "Gemma 3n checkpoints: the published slicing table (CSV, as tests/data/gemma3n-slicing-configs.csv) "
          "whose rows become the planner's candidates (quality 1 - MMLU). Empty: every uniform FFN width");
ABSL_FLAG(int, max_prompt_tokens, 768,
          "Longest prompt in tokens (after tokenization, BOS included), 1..1048576 and below the model's "
          "max_position_embeddings");
ABSL_FLAG(int, max_new_tokens_limit, 256,
          "Largest max_new_tokens (and longest Score continuation), 1..1048576 and below the model's "
          "max_position_embeddings");
ABSL_FLAG(int, max_stop_sequences, 8, "Stop sequences per request, 0..64");
ABSL_FLAG(int, max_stop_bytes, 64, "Bytes per stop sequence, 1..1024");
ABSL_FLAG(int64_t, max_message_bytes, 1 << 20, "Largest request message in bytes, 1024..67108864");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(30),
          "On SIGTERM/SIGINT, how long running requests may take to finish before they are cancelled, 0s..1h");
// Security (SECURITY.md).
ABSL_FLAG(std::string, metrics_host, "",
          "Address the metrics endpoint listens on; empty: the same as --host (the metrics endpoint has no "
          "authentication: keep it on a private address)");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate (chain) of the gRPC port; with --tls_key turns TLS on. Empty: plaintext");
ABSL_FLAG(std::string, tls_key, "", "PEM private key (unencrypted) of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificate(s): clients must present a certificate signed by one of them (mutual TLS)");
ABSL_FLAG(std::string, auth_tokens, "",
          "Bearer tokens JSON file: {\"<token>\" or \"sha256:<hex>\": {\"name\": ..., \"tiers\": [...] or \"*\"}}; "
          "every MatFormer call then needs metadata 'authorization: Bearer <token>' (health and reflection stay "
          "open). Empty: no authentication");

namespace matformer::server {
namespace {

constexpr int kUsageExit = 2;
constexpr int kRuntimeExit = 1;
// After the drain, how long gRPC may take to deliver the last responses.
constexpr absl::Duration kShutdownGrace = absl::Seconds(5);

ServerOptions OptionsFromFlags() {
  ServerOptions o;
  o.model_dir = absl::GetFlag(FLAGS_model_dir);
  if (o.model_dir == kDefaultModelDir) o.model_dir = ResolveRepoPath(o.model_dir);
  o.tiers = absl::GetFlag(FLAGS_tiers);
  if (o.tiers == kDefaultTiers) o.tiers = ResolveRepoPath(o.tiers);
  o.host = absl::GetFlag(FLAGS_host);
  o.port = absl::GetFlag(FLAGS_port);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  o.policy = absl::GetFlag(FLAGS_policy);
  o.over_budget = absl::GetFlag(FLAGS_over_budget);
  o.engine_threads = absl::GetFlag(FLAGS_engine_threads);
  o.max_batch = absl::GetFlag(FLAGS_max_batch);
  o.max_queue = absl::GetFlag(FLAGS_max_queue);
  o.kv_blocks = absl::GetFlag(FLAGS_kv_blocks);
  o.kv_dtype = absl::GetFlag(FLAGS_kv_dtype);
  o.ple_cache_mb = absl::GetFlag(FLAGS_ple_cache_mb);
  o.ffn_granule = absl::GetFlag(FLAGS_ffn_granule);
  o.slicing_table = absl::GetFlag(FLAGS_slicing_table);
  o.limits = {.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens),
              .max_new_tokens_limit = absl::GetFlag(FLAGS_max_new_tokens_limit),
              .max_stop_sequences = absl::GetFlag(FLAGS_max_stop_sequences),
              .max_stop_bytes = absl::GetFlag(FLAGS_max_stop_bytes)};
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  o.drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  o.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  o.tls = {.cert = absl::GetFlag(FLAGS_tls_cert),
           .key = absl::GetFlag(FLAGS_tls_key),
           .client_ca = absl::GetFlag(FLAGS_tls_client_ca)};
  o.auth_tokens = absl::GetFlag(FLAGS_auth_tokens);
  return o;
}

int Fail(int exit_code, const absl::Status& status) {
  std::fprintf(stderr, "matformer-server: %s\n", std::string(status.message()).c_str());
  return exit_code;
}

double SecondsSince(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

struct LoadedModel {
  std::unique_ptr<ServingEngine> engine;
  std::vector<Candidate> candidates;  // the planner's, best quality first
};

// The model family is read from config.json: a Hugging Face Gemma 3n
// checkpoint, else this repo's format.
absl::StatusOr<LoadedModel> LoadModel(const ServerOptions& options) {
  MF_ASSIGN_OR_RETURN(const bool gemma3n, gemma3n::IsGemma3nDirectory(options.model_dir));
  LoadedModel loaded;
  if (gemma3n) {
    MF_ASSIGN_OR_RETURN(std::shared_ptr<const gemma3n::Model> model,
                        gemma3n::Model::Load(options.model_dir, {.ffn_granule = options.ffn_granule}));
    MF_ASSIGN_OR_RETURN(std::unique_ptr<gemma3n::ServingModel> engine,
                        gemma3n::ServingModel::Create(model, EngineOptionsFrom(options)));
    if (options.slicing_table.empty()) {
      MF_ASSIGN_OR_RETURN(loaded.candidates, LoadCandidates(engine->config(), options.model_dir));
    } else {
      MF_ASSIGN_OR_RETURN(loaded.candidates,
                          gemma3n::CandidatesFromSlicingTable(model->config(), model->ffn_granule(), engine->config(),
                                                              options.slicing_table));
    }
    loaded.engine = std::move(engine);
    return loaded;
  }
  if (!options.slicing_table.empty()) {
    return absl::InvalidArgumentError("--slicing_table applies to Gemma 3n checkpoints only");
  }
  MF_ASSIGN_OR_RETURN(std::shared_ptr<const Model> model, Model::Load(options.model_dir));
  MF_ASSIGN_OR_RETURN(loaded.engine, Engine::Create(model, EngineOptionsFrom(options)));
  MF_ASSIGN_OR_RETURN(loaded.candidates, LoadCandidates(model->config(), options.model_dir));
  return loaded;
}

// Everything after flag parsing. `signals` are blocked in every thread and
// taken by sigwait once the server is up.
int Run(const sigset_t& signals) {
  const ServerOptions options = OptionsFromFlags();
  if (absl::Status valid = ValidateOptions(options); !valid.ok()) return Fail(kUsageExit, valid);
  absl::StatusOr<std::vector<Tier>> tiers = LoadTiers(options.tiers);
  if (!tiers.ok()) {
    return Fail(kUsageExit, absl::InvalidArgumentError(absl::StrCat("--tiers: ", tiers.status().message())));
  }
  // Security flags are checked before the (slow) model load, like the others.
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeServerCredentials(options.tls);
  if (!credentials.ok()) return Fail(kUsageExit, credentials.status());
  std::optional<TokenAuthenticator> authenticator;
  if (!options.auth_tokens.empty()) {
    absl::StatusOr<TokenAuthenticator> loaded = TokenAuthenticator::Load(options.auth_tokens, *tiers);
    if (!loaded.ok()) {
      return Fail(kUsageExit,
                  absl::InvalidArgumentError(absl::StrCat("--auth_tokens: ", loaded.status().message())));
    }
    authenticator = *std::move(loaded);
  }

  const int engine_threads = options.engine_threads == -1 ? DefaultEngineThreads() : options.engine_threads;
  SetEngineThreads(engine_threads);  // calibration runs on this thread, steps on the scheduler's
  const absl::Time start = absl::Now();
  absl::StatusOr<LoadedModel> loaded = LoadModel(options);
  if (!loaded.ok()) {
    return Fail(kRuntimeExit, absl::InvalidArgumentError(
                                  absl::StrCat("--model_dir=", options.model_dir, ": ", loaded.status().message())));
  }
  std::unique_ptr<ServingEngine> engine = std::move(loaded->engine);
  absl::StatusOr<std::vector<Candidate>> candidates = std::move(loaded->candidates);
  const ModelConfig& config = engine->config();
  if (absl::Status valid = ValidateOptionsForModel(options, config); !valid.ok()) return Fail(kUsageExit, valid);
  absl::StatusOr<PolicyChoice> policy = ParsePolicy(options.policy, config);
  if (!policy.ok()) return Fail(kUsageExit, policy.status());
  if (policy->fixed_spec.has_value()) {
    if (absl::Status valid = engine->ValidateSpec(*policy->fixed_spec); !valid.ok()) {
      return Fail(kUsageExit, absl::InvalidArgumentError(absl::StrCat("--policy=", options.policy, ": ", valid.message())));
    }
  }
  Log(absl::StrFormat("model %s (%s): %d layers, granularities %s, %.1f M active params at full width, loaded in %.2f s; "
                      "engine threads %s",
                      options.model_dir, engine->family(), config.num_layers, absl::StrJoin(config.granularity_names, ","),
                      SubmodelSpec::Full(config).active_params() / 1e6, SecondsSince(start),
                      engine_threads == 0 ? "OpenMP default" : absl::StrCat(engine_threads)));

  const absl::Time calibration_start = absl::Now();
  const std::string latency_path = absl::GetFlag(FLAGS_latency_model);
  absl::StatusOr<LatencyModel> latency =
      latency_path.empty() ? LatencyModel::Calibrate(*engine) : LatencyModel::Load(config, latency_path);
  if (!latency.ok()) {
    return Fail(latency_path.empty() ? kRuntimeExit : kUsageExit,
                latency_path.empty() ? latency.status()
                                     : absl::InvalidArgumentError(absl::StrCat("--latency_model=",
                                                                               latency.status().message())));
  }
  Log(absl::StrFormat("latency model %s in %.2f s (step = %s); %d candidate submodels",
                      latency_path.empty() ? "calibrated" : "loaded from " + latency_path,
                      SecondsSince(calibration_start), latency->Describe(config), candidates->size()));
  if (const std::string out = absl::GetFlag(FLAGS_write_latency_model); !out.empty()) {
    if (absl::Status saved = latency->Save(config, out); !saved.ok()) {
      return Fail(kUsageExit, absl::InvalidArgumentError(absl::StrCat("--write_latency_model=", saved.message())));
    }
  }
  latency->set_learning(absl::GetFlag(FLAGS_online_correction));

  std::vector<int64_t> candidate_params;
  for (const Candidate& candidate : *candidates) candidate_params.push_back(candidate.spec.active_params());
  const SchedulerOptions scheduler_options{
      .engine_threads = engine_threads, .max_batch_sequences = options.max_batch, .max_queue = options.max_queue};
  Planner planner(config, *std::move(candidates), *std::move(latency), policy->policy, policy->fixed_spec,
                  ParseOverBudget(options.over_budget), scheduler_options.prefill_chunk);
  planner.correction().set_learning(absl::GetFlag(FLAGS_online_correction));
  Scheduler scheduler(engine.get(), &planner, scheduler_options);
  // Declared after the scheduler, so destroyed before it: the metrics endpoint
  // reads the scheduler. (The scheduler records into the metrics only while
  // it has requests, and it has none by then: drained, or never serving.)
  ServerMetrics metrics(*tiers, candidate_params);
  scheduler.set_step_observer([&metrics](int rows, absl::Duration duration) { metrics.RecordStep(rows, duration); });
  const std::string metrics_host = options.metrics_host.empty() ? options.host : options.metrics_host;
  absl::StatusOr<int> metrics_port =
      metrics.Serve(metrics_host, options.metrics_port, [&metrics, &scheduler, &planner, engine = engine.get()] {
        metrics.SetGauges(scheduler.stats(), engine->ple_cache().stats(), planner.latency().correction(),
                          planner.correction().factors());
      });
  if (!metrics_port.ok()) return Fail(kRuntimeExit, metrics_port.status());

  MatFormerService service(
      {.engine = engine.get(),
       .planner = &planner,
       .scheduler = &scheduler,
       .metrics = &metrics,
       .tiers = &*tiers,
       .limits = options.limits,
       .authenticator = authenticator.has_value() ? &*authenticator : nullptr,
       .serving = {.model_dir = options.model_dir, .policy = options.policy, .over_budget = options.over_budget}});
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string address = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(address, *credentials, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail(kRuntimeExit, absl::UnavailableError(absl::StrCat("cannot listen on ", address)));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(v1::MatFormer::service_full_name(), true);
  health->SetServingStatus(true);
  Log(absl::StrCat("listening on ", options.host, ":", port));
  Log(absl::StrCat("metrics on ", metrics_host, ":", *metrics_port));
  const char* transport = !options.tls.enabled()          ? "plaintext"
                          : options.tls.client_ca.empty() ? "TLS"
                                                          : "mutual TLS (client certificates required)";
  Log(absl::StrCat("security: ", transport, ", ",
                   authenticator.has_value() ? absl::StrCat(authenticator->size(), " bearer tokens")
                                             : std::string("no authentication")));
  if (authenticator.has_value() && !options.tls.enabled()) {
    Log("warning: bearer tokens over plaintext can be read by anyone on the network path; use --tls_cert");
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  Log(absl::StrCat("signal ", signal_number, ": draining (up to ", absl::FormatDuration(options.drain_timeout), ")"));
  // Refuse new work before health says so: a client that saw NOT_SERVING and
  // sent a request anyway was admitted (ServerLifecycle.SigtermDrainsThenExitsZero
  // caught it once the engine became fast enough to reach the window).
  scheduler.StopAdmitting();
  health->SetServingStatus(false);
  // A second signal means "now": exit without waiting for the drain.
  std::thread([signals] {
    int second = 0;
    sigwait(&signals, &second);
    Log(absl::StrCat("signal ", second, " again: exiting without draining"));
    std::_Exit(128 + second);
  }).detach();
  scheduler.Drain(options.drain_timeout);
  server->Shutdown(absl::ToChronoTime(absl::Now() + kShutdownGrace));
  Log("drained; exiting");
  return 0;
}

}  // namespace
}  // namespace matformer::server

int main(int argc, char** argv) {
  // Blocked before any thread starts, so every thread inherits the mask and
  // the signals wait for sigwait in Run.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // --help lists this file's flags (absl's default looks for a file named after the binary;
  // it passes the file name without its leading slash).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) { return absl::EndsWith(__FILE__, file); };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  absl::SetProgramUsageMessage(
      "Serves a MatFormer model over gRPC (matformer.v1.MatFormer, health, reflection) with Prometheus metrics.\n"
      "Usage: matformer-server [--model_dir=models/default] [--port=50051] [--metrics_port=9464] ...");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::fprintf(stderr, "matformer-server: unexpected argument '%s' (flags are --name=value)\n", positional[1]);
    return 2;
  }
  return matformer::server::Run(signals);
}
