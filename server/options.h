#ifndef MATFORMER_SERVER_OPTIONS_H_
#define MATFORMER_SERVER_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/model/config.h"
#include "core/model/submodel.h"
#include "core/plan/planner.h"
#include "core/serving_engine.h"
#include "server/requests.h"
#include "server/tls.h"

namespace matformer::server {

// The server's flags, as values (main.cc defines the flags themselves).
struct ServerOptions {
  std::string model_dir;
  std::string host;
  int port = 0;
  int metrics_port = 0;
  std::string metrics_host;  // empty: the same as host
  std::string tiers;
  std::string policy;
  std::string over_budget;
  int engine_threads = 0;  // -1: every core but one; 0: OpenMP's default
  int max_batch = 0;
  int max_queue = 0;
  int64_t kv_blocks = 0;
  std::string kv_dtype;  // auto (the model's dtype), f32, bf16 or int8
  int64_t ple_cache_mb = 0;
  // Gemma 3n checkpoints only: the FFN slab width (every slice width is a
  // multiple of it) and the published slicing table as the quality table.
  int64_t ffn_granule = 0;
  std::string slicing_table;
  RequestLimits limits;
  int64_t max_message_bytes = 0;
  absl::Duration drain_timeout;
  // Security (SECURITY.md): TLS files, and the bearer tokens file (empty: no authentication).
  TlsFlags tls;
  std::string auth_tokens;
};

// Checks every flag against its limit before anything is loaded; the error
// names the flag, its value and the limit.
absl::Status ValidateOptions(const ServerOptions& options);

// The checks that need the model: request limits against its context length,
// the KV pool against one longest request and this machine's memory.
absl::Status ValidateOptionsForModel(const ServerOptions& options, const ModelConfig& config);

// What the serving engine owns, sized by the flags (validated first).
EngineOptions EngineOptionsFrom(const ServerOptions& options);

struct PolicyChoice {
  PlanPolicy policy = PlanPolicy::kElastic;
  std::optional<SubmodelSpec> fixed_spec;
};
// --policy: "elastic" or "fixed:<spec>" (the spec parsed against `config`).
absl::StatusOr<PolicyChoice> ParsePolicy(const std::string& policy, const ModelConfig& config);
// --over_budget: "reject" or "serve_smallest" (validated by ValidateOptions).
OverBudget ParseOverBudget(const std::string& over_budget);

// A repository-relative default path ("models/default") as found from the
// working directory, else from the directories above the executable (so
// build/server/matformer-server finds <repo>/models/default from anywhere);
// `path` unchanged when neither has it.
std::string ResolveRepoPath(const std::string& path);

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_OPTIONS_H_
