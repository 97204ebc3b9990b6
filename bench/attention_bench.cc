// Speed of the paged attention kernel alone (core/kernels/attention.h), for
// each instruction set's build and KV dtype, against this machine's limits
// measured in the same run (bench/machine_limits.h).
//
//   attention_bench [--sequences 16] [--context 512] [--layers 16] ...
//
// decode   every sequence holds `context` positions and adds one query token
//          per layer: the KV of all layers is read once per step (from DRAM
//          when it exceeds the cache), as in a decode step of the engine.
// prefill  one sequence of `context` query tokens on an empty cache, causal.
// Both run through StepAttention, as the engine calls it. GFLOP/s counts the
// score and weighted-sum multiply-adds (4 * head_dim per visible query-key
// pair); /f32 is against the f32 matmul peak (the kernel computes in f32);
// decode's KV GB/s is against the DRAM read bandwidth.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "bench/machine_limits.h"
#include "bench/process_stats.h"
#include "core/kernels/attention.h"
#include "core/kernels/amx.h"
#include "core/kernels/attention_kernel.h"
#include "core/kv/kv_cache.h"
#include "core/util/status_macros.h"

ABSL_FLAG(int, sequences, 16, "Decode: sequences per step");
ABSL_FLAG(int, context, 512, "Positions per sequence (decode) / prompt tokens (prefill)");
ABSL_FLAG(int, layers, 16, "Layers per step (each with its own KV)");
ABSL_FLAG(int, kv_heads, 4, "KV heads");
ABSL_FLAG(int, heads_per_kv, 4, "Query heads per KV head");
ABSL_FLAG(int, head_dim, 64, "Head dimension");
ABSL_FLAG(int, block_tokens, 16, "Positions per KV block");
ABSL_FLAG(int, repeats, 10, "Timed steps per row (the median is reported)");
ABSL_FLAG(std::vector<std::string>, modes, std::vector<std::string>({"decode", "prefill"}), "decode, prefill");
ABSL_FLAG(std::vector<std::string>, kernels, std::vector<std::string>({"avx2", "avx512", "amx"}),
          "Instruction sets to run (avx512 and amx are skipped on a CPU without them or with "
          "MATFORMER_DISABLE_AMX=1; amx runs bf16 pools of head_dim a multiple of 64 only)");
ABSL_FLAG(std::vector<std::string>, kv_dtypes, std::vector<std::string>({"f32", "bf16"}), "KV pool dtypes");

namespace matformer::bench {
namespace {

struct Geometry {
  int sequences, context, layers, kv_heads, heads_per_kv, head_dim, block_tokens;
  int64_t row() const { return int64_t{kv_heads} * heads_per_kv * head_dim; }
};

// A pool with `sequences` sequences of `length` random positions each, their
// blocks taken one at a time in turn, as a server's decode steps take them (the
// pool has no spare block, so the allocator cannot keep every run unbroken).
struct FilledPool {
  std::unique_ptr<KvPool> pool;
  std::vector<std::unique_ptr<KvSequence>> sequences;
};

absl::StatusOr<FilledPool> Fill(const Geometry& g, KvDtype dtype, int sequences, int64_t length) {
  FilledPool filled;
  const int64_t blocks_each = (length + g.block_tokens) / g.block_tokens;
  filled.pool = std::make_unique<KvPool>(g.layers, g.kv_heads, g.head_dim, g.block_tokens,
                                         blocks_each * sequences, dtype);
  for (int i = 0; i < sequences; ++i) filled.sequences.push_back(std::make_unique<KvSequence>(filled.pool.get()));
  for (int64_t n = g.block_tokens; n <= blocks_each * g.block_tokens; n += g.block_tokens) {
    for (auto& sequence : filled.sequences) MF_RETURN_IF_ERROR(sequence->Reserve(n));
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> key(g.head_dim), value(g.head_dim);
  for (auto& sequence : filled.sequences) {
    for (int64_t p = 0; p < length; ++p) {
      for (int layer = 0; layer < g.layers; ++layer) {
        for (int h = 0; h < g.kv_heads; ++h) {
          for (float& x : key) x = normal(rng);
          for (float& x : value) x = normal(rng);
          filled.pool->Write(sequence->BlockOf(p), layer, h, sequence->SlotOf(p), key.data(), value.data());
        }
      }
    }
    sequence->set_length(length);
  }
  return filled;
}

struct Row {
  double ms, flops, kv_bytes;
};

// Median seconds of `repeats` calls of step(), after one untimed call.
template <typename Step>
double MedianSeconds(int repeats, Step step) {
  step();
  std::vector<double> seconds;
  for (int i = 0; i < repeats; ++i) {
    const double start = NowSeconds();
    step();
    seconds.push_back(NowSeconds() - start);
  }
  return Median(seconds);
}

// Median seconds of StepAttention over every layer for `segments` (whose
// pool_layer is set per layer), `rows` rows of random queries.
double TimeLayers(const Geometry& g, PagedAttentionFn kernel, int repeats, std::vector<AttentionSegment> segments,
                  int64_t rows) {
  std::vector<float> q(rows * g.row()), out(q.size());
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : q) x = normal(rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(g.head_dim));
  return MedianSeconds(repeats, [&] {
    for (int layer = 0; layer < g.layers; ++layer) {
      for (AttentionSegment& segment : segments) segment.pool_layer = layer;
      StepAttention(segments, g.kv_heads, g.heads_per_kv, q.data(), out.data(), scale, 0, kernel);
    }
  });
}

// `pairs` visible query-key pairs per (layer, query head); `positions` read per (layer, KV head).
Row RowOf(const Geometry& g, const KvPool& pool, double seconds, double pairs, double positions) {
  return Row{.ms = seconds * 1e3,
             .flops = 4.0 * g.head_dim * g.kv_heads * g.heads_per_kv * g.layers * pairs,
             .kv_bytes = g.kv_heads * g.layers * positions * pool.position_bytes()};
}

absl::StatusOr<Row> Decode(const Geometry& g, KvDtype dtype, PagedAttentionFn kernel, int repeats) {
  MF_ASSIGN_OR_RETURN(FilledPool filled, Fill(g, dtype, g.sequences, g.context + 1));
  std::vector<AttentionSegment> segments;
  for (int i = 0; i < g.sequences; ++i) {
    segments.push_back({.kv = filled.sequences[i].get(), .pool_layer = 0, .first_row = i,
                        .first_position = g.context, .tokens = 1});
  }
  const double seconds = TimeLayers(g, kernel, repeats, segments, g.sequences);
  const double positions = static_cast<double>(g.sequences) * (g.context + 1);
  return RowOf(g, *filled.pool, seconds, positions, positions);
}

absl::StatusOr<Row> Prefill(const Geometry& g, KvDtype dtype, PagedAttentionFn kernel, int repeats) {
  MF_ASSIGN_OR_RETURN(FilledPool filled, Fill(g, dtype, 1, g.context));
  const double seconds = TimeLayers(g, kernel, repeats,
                                    {{.kv = filled.sequences[0].get(), .pool_layer = 0, .first_row = 0,
                                      .first_position = 0, .tokens = g.context}},
                                    g.context);
  return RowOf(g, *filled.pool, seconds, g.context * (g.context + 1) / 2.0, g.context);
}

absl::Status Run() {
  const Geometry g{absl::GetFlag(FLAGS_sequences), absl::GetFlag(FLAGS_context), absl::GetFlag(FLAGS_layers),
                   absl::GetFlag(FLAGS_kv_heads),  absl::GetFlag(FLAGS_heads_per_kv),
                   absl::GetFlag(FLAGS_head_dim),  absl::GetFlag(FLAGS_block_tokens)};
  const int repeats = std::max(1, absl::GetFlag(FLAGS_repeats));
  const std::pair<const char*, std::pair<int, int>> bounds[] = {
      {"sequences", {g.sequences, 1024}}, {"context", {g.context, 1 << 16}},  {"layers", {g.layers, 256}},
      {"kv_heads", {g.kv_heads, 64}},     {"heads_per_kv", {g.heads_per_kv, 64}}, {"head_dim", {g.head_dim, 1024}},
      {"block_tokens", {g.block_tokens, 1024}}};
  for (const auto& [flag, value_and_max] : bounds) {
    const auto [value, max] = value_and_max;
    if (value < 1 || value > max) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", value, ": must be in [1, ", max, "]"));
    }
  }
  // The decode pool holds every sequence's positions in every layer.
  const double pool_bytes = 2.0 * g.sequences * (g.context + g.block_tokens) * g.layers * g.kv_heads *
                            (g.head_dim + KvPool::kValueDimMultiple) * sizeof(float);
  constexpr double kMaxPoolBytes = 16.0 * (1 << 30);
  if (pool_bytes > kMaxPoolBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--sequences x --context x --layers x --kv_heads x --head_dim need a ", pool_bytes / (1 << 30),
        " GiB KV pool, more than the limit of 16 GiB"));
  }
  std::vector<std::pair<std::string, PagedAttentionFn>> kernels;
  for (const std::string& name : absl::GetFlag(FLAGS_kernels)) {
    if (name == "avx2") {
      kernels.push_back({name, kernels_internal::PagedAttentionAvx2});
    } else if (name == "avx512") {
      if (__builtin_cpu_supports("avx512f")) kernels.push_back({name, kernels_internal::PagedAttentionAvx512});
    } else if (name == "amx") {
      if (kernels_internal::AmxEnabled()) kernels.push_back({name, kernels_internal::PagedAttentionAmx});
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--kernels: unknown '", name, "' (avx2, avx512, amx)"));
    }
  }
  std::vector<KvDtype> dtypes;
  for (const std::string& name : absl::GetFlag(FLAGS_kv_dtypes)) {
    absl::StatusOr<std::optional<KvDtype>> dtype = ParseKvDtype(name);
    if (!dtype.ok() || !dtype->has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("--kv_dtypes: unknown '", name, "' (f32, bf16, int8)"));
    }
    dtypes.push_back(**dtype);
  }
  for (const std::string& mode : absl::GetFlag(FLAGS_modes)) {
    if (mode != "decode" && mode != "prefill") {
      return absl::InvalidArgumentError(absl::StrCat("--modes: unknown '", mode, "' (decode, prefill)"));
    }
  }
  MF_RETURN_IF_ERROR(CheckCpuRunsKernels());
  const MachineLimits limits = MeasureMachineLimits();
  std::printf("== machine limits (%d OpenMP threads): DRAM read %.1f GB/s, f32 matmul peak %.0f GFLOP/s, "
              "bf16 %.0f\n",
              omp_get_max_threads(), limits.dram_read_gbps, limits.f32_gflops, limits.bf16_gflops);
  std::printf("== %d layers x %d KV heads x %d query heads each, head_dim %d, blocks of %d; decode: %d sequences "
              "at %d positions; prefill: %d tokens; median of %d\n",
              g.layers, g.kv_heads, g.heads_per_kv, g.head_dim, g.block_tokens, g.sequences, g.context, g.context,
              repeats);
  std::printf("%-8s %-7s %-5s %9s %9s %6s %9s %6s\n", "mode", "kernel", "kv", "ms", "GFLOP/s", "/f32", "KV GB/s",
              "/DRAM");
  for (const std::string& mode : absl::GetFlag(FLAGS_modes)) {
    for (KvDtype dtype : dtypes) {
      for (const auto& [name, kernel] : kernels) {
        if (kernel == kernels_internal::PagedAttentionAmx &&
            !kernels_internal::PagedAttentionAmxRuns(KvPool(1, 1, g.head_dim, g.block_tokens, 1, dtype))) {
          continue;
        }
        MF_ASSIGN_OR_RETURN(const Row row, mode == "decode" ? Decode(g, dtype, kernel, repeats)
                                                           : Prefill(g, dtype, kernel, repeats));
        const double gflops = row.flops / row.ms * 1e-6, gbps = row.kv_bytes / row.ms * 1e-6;
        std::printf("%-8s %-7s %-5s %9.2f %9.1f %6.3f %9.1f %6.3f\n", mode.c_str(), name.c_str(),
                    KvDtypeName(dtype).data(), row.ms,
                    gflops, gflops / limits.f32_gflops, gbps, gbps / limits.dram_read_gbps);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace matformer::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Paged attention kernel speed per instruction set and KV dtype.\n"
                               "  attention_bench [--sequences N] [--context N] [--layers N] ...");
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = matformer::bench::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "attention_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
