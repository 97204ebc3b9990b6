#include "server/options.h"

#include <unistd.h>

#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/engine.h"
#include "core/util/status_macros.h"

namespace matformer::server {
namespace {

absl::Status CheckRange(absl::string_view flag, int64_t value, int64_t low, int64_t high) {
  if (value < low || value > high) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", value, ": outside [", low, ", ", high, "]"));
  }
  return absl::OkStatus();
}

bool ValidHost(const std::string& host) {
  return !host.empty() && !absl::StrContains(host, " ") && !absl::StrContains(host, "/");
}

int64_t PhysicalMemoryBytes() {
  return static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace

absl::Status ValidateOptions(const ServerOptions& o) {
  if (o.model_dir.empty()) return absl::InvalidArgumentError("--model_dir: empty");
  if (!ValidHost(o.host)) {
    return absl::InvalidArgumentError(absl::StrCat("--host=\"", o.host, "\": expected an address such as 127.0.0.1"));
  }
  if (!o.metrics_host.empty() && !ValidHost(o.metrics_host)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics_host=\"", o.metrics_host, "\": expected an address such as 127.0.0.1"));
  }
  struct Range {
    absl::string_view flag;
    int64_t value, low, high;
  };
  const Range ranges[] = {
      {"port", o.port, 0, 65535},
      {"metrics_port", o.metrics_port, 0, 65535},
      {"engine_threads", o.engine_threads, -1, 1024},
      {"max_batch", o.max_batch, 1, 1024},
      {"max_queue", o.max_queue, 1, 100000},
      {"kv_blocks", o.kv_blocks, 1, int64_t{1} << 24},
      {"ple_cache_mb", o.ple_cache_mb, 0, 65536},
      {"ffn_granule", o.ffn_granule, 1, int64_t{1} << 20},
      {"max_prompt_tokens", o.limits.max_prompt_tokens, 1, 1 << 20},
      {"max_new_tokens_limit", o.limits.max_new_tokens_limit, 1, 1 << 20},
      {"max_stop_sequences", o.limits.max_stop_sequences, 0, 64},
      {"max_stop_bytes", o.limits.max_stop_bytes, 1, 1024},
      {"max_message_bytes", o.max_message_bytes, 1 << 10, 64 << 20},
  };
  for (const Range& range : ranges) {
    if (absl::Status status = CheckRange(range.flag, range.value, range.low, range.high); !status.ok()) return status;
  }
  if (absl::Status status = ParseKvDtype(o.kv_dtype).status(); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", status.message()));
  }
  if (o.port != 0 && o.port == o.metrics_port) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics_port=", o.metrics_port, ": same as --port"));
  }
  if (o.tiers.empty()) return absl::InvalidArgumentError("--tiers: empty (a tiers JSON file)");
  if (o.policy != "elastic" && !absl::StartsWith(o.policy, "fixed:")) {
    return absl::InvalidArgumentError(absl::StrCat("--policy=", o.policy, ": expected elastic or fixed:<spec>"));
  }
  if (o.over_budget != "reject" && o.over_budget != "serve_smallest") {
    return absl::InvalidArgumentError(
        absl::StrCat("--over_budget=", o.over_budget, ": expected reject or serve_smallest"));
  }
  if (o.drain_timeout < absl::ZeroDuration() || o.drain_timeout > absl::Hours(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--drain_timeout=", absl::FormatDuration(o.drain_timeout), ": outside [0s, 1h]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateOptionsForModel(const ServerOptions& o, const ModelConfig& config) {
  // A prompt must leave room for at least one generated token.
  if (o.limits.max_prompt_tokens >= config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--max_prompt_tokens=", o.limits.max_prompt_tokens,
                                                   ": must be below the model's max_position_embeddings ",
                                                   config.max_position_embeddings));
  }
  if (o.limits.max_new_tokens_limit >= config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--max_new_tokens_limit=", o.limits.max_new_tokens_limit,
                                                   ": must be below the model's max_position_embeddings ",
                                                   config.max_position_embeddings));
  }
  // The scheduler reserves a request's whole sequence at admission: the pool
  // must hold the longest request the limits allow.
  const int64_t block_tokens = EngineOptions{}.kv_block_tokens;
  const int64_t longest =
      std::min<int64_t>(o.limits.max_prompt_tokens + o.limits.max_new_tokens_limit, config.max_position_embeddings);
  if (o.kv_blocks * block_tokens < longest) {
    return absl::InvalidArgumentError(absl::StrCat("--kv_blocks=", o.kv_blocks, ": holds ", o.kv_blocks * block_tokens,
                                                   " tokens, fewer than one request of ", longest,
                                                   " (--max_prompt_tokens + --max_new_tokens_limit); need at least ",
                                                   (longest + block_tokens - 1) / block_tokens));
  }
  MF_ASSIGN_OR_RETURN(const std::optional<KvDtype> kv_dtype, ParseKvDtype(o.kv_dtype));
  const int64_t kv_bytes = o.kv_blocks * KvPool::BlockBytes(config.num_layers, config.num_kv_heads, config.head_dim,
                                                            static_cast<int>(block_tokens),
                                                            kv_dtype.value_or(KvDtypeOf(config.dtype)));
  const int64_t memory = PhysicalMemoryBytes();
  if (kv_bytes > memory / 4 * 3) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--kv_blocks=%d: the KV pool would take %.1f GiB, more than 3/4 of this machine's %.1f GiB",
                        o.kv_blocks, kv_bytes / double(1 << 30), memory / double(1 << 30)));
  }
  return absl::OkStatus();
}

EngineOptions EngineOptionsFrom(const ServerOptions& options) {
  return {.kv_blocks = options.kv_blocks,
          .kv_dtype = ParseKvDtype(options.kv_dtype).value_or(std::nullopt),
          .ple_cache_bytes = static_cast<size_t>(options.ple_cache_mb) << 20};
}

absl::StatusOr<PolicyChoice> ParsePolicy(const std::string& policy, const ModelConfig& config) {
  if (policy == "elastic") return PolicyChoice{};
  constexpr absl::string_view kFixed = "fixed:";
  if (!absl::StartsWith(policy, kFixed)) {
    return absl::InvalidArgumentError(absl::StrCat("--policy=", policy, ": expected elastic or fixed:<spec>"));
  }
  absl::StatusOr<SubmodelSpec> spec = SubmodelSpec::Parse(config, absl::string_view(policy).substr(kFixed.size()));
  if (!spec.ok()) return absl::InvalidArgumentError(absl::StrCat("--policy=", policy, ": ", spec.status().message()));
  return PolicyChoice{PlanPolicy::kFixed, *std::move(spec)};
}

OverBudget ParseOverBudget(const std::string& over_budget) {
  return over_budget == "serve_smallest" ? OverBudget::kServeSmallest : OverBudget::kReject;
}

std::string ResolveRepoPath(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (fs::path(path).is_absolute() || fs::exists(path, error)) return path;
  const fs::path executable = fs::read_symlink("/proc/self/exe", error);
  if (error) return path;
  for (fs::path dir = executable.parent_path(); !dir.empty(); dir = dir.parent_path()) {
    if (fs::exists(dir / path, error)) return (dir / path).string();
    if (dir == dir.root_path()) break;
  }
  return path;
}

}  // namespace matformer::server
