// End-to-end speed of the engine on one model directory, as ratios to this
// machine's limits measured in the same process (bench/machine_limits.h).
//
//   engine_bench --model_dir DIR [--json_out FILE]
//
// For every uniform granularity (S, M, L, XL, by the model's names) and prompt
// length it measures:
//   prefill  one prompt in one Step on a fresh sequence; "warm" = the prompt's
//            tokens are already in the PLE cache (the steady state of a
//            server), "cold" = a fresh engine whose PLE cache has none of them.
//   decode   B sequences holding the prompt, one token each per Step; the
//            bytes of active weights a step streams, against DRAM bandwidth.
//   memory   RSS, the PLE table's mapped vs resident pages, packed weights, KV.
// bench/README.md explains every column.

#include <fcntl.h>
#include <omp.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "bench/machine_limits.h"
#include "bench/process_stats.h"
#include "core/engine.h"
#include "core/kernels/amx.h"
#include "core/kernels/attention_kernel.h"
#include "core/model/submodel.h"
#include "core/model/weights.h"
#include "core/util/stage_profile.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, model_dir, "", "Model directory to benchmark");
ABSL_FLAG(std::string, json_out, "", "Also write the results as JSON to this file");
ABSL_FLAG(std::vector<std::string>, specs, {},
          "Submodels to run (default: every granularity of the model, uniform)");
ABSL_FLAG(std::string, prompts, "128,512", "Prompt lengths in tokens, comma-separated");
ABSL_FLAG(std::string, batches, "1,4,16,32", "Decode batch rows, comma-separated");
ABSL_FLAG(int, prefill_repeats, 8,
          "Timed prefills per (spec, prompt); at least the largest batch are run anyway, since "
          "the decode sequences are prefilled the same way, and all of them are timed");
ABSL_FLAG(int, cold_repeats, 2, "Timed prefills on a fresh PLE cache per (spec, prompt)");
ABSL_FLAG(int, decode_warmup, 2, "Untimed decode steps before the timed ones");
ABSL_FLAG(int, decode_steps, 24, "Timed decode steps per (spec, prompt, batch)");
ABSL_FLAG(int, kv_context, 640, "Tokens per sequence the KV pool is sized for");
ABSL_FLAG(std::string, kv_dtype, "auto", "KV cache storage: auto (the model's dtype), f32, bf16 or int8");
ABSL_FLAG(bool, drop_file_cache, true,
          "Evict model.safetensors from the page cache before loading (posix_fadvise), so that "
          "the PLE table's resident pages are the ones the engine pulled in, not leftovers of "
          "whoever wrote or read the file last");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the random prompt");
ABSL_FLAG(bool, profile, false,
          "Also time every stage of the timed prefills and decode steps (Engine::set_profile) and "
          "print where a step's time goes; reading the clock ~30 times per layer costs under 1%");

namespace matformer::bench {
namespace {

using Json = nlohmann::ordered_json;

constexpr int kBlockTokens = 16;

double Best(const std::vector<double>& seconds) {
  return *std::min_element(seconds.begin(), seconds.end());
}

// What one step of `spec` multiplies, from the packed matrices themselves so
// that padding and the f32 layout are counted as the kernels see them.
struct SpecCost {
  int64_t layer_params = 0;  // matmul weights of all kept layers (per token)
  size_t layer_bytes = 0;    // their packed bytes, streamed once per step
  int64_t lm_head_params = 0;
  size_t lm_head_bytes = 0;
};

SpecCost CostOf(const Model& model, const SubmodelSpec& spec) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  SpecCost cost;
  auto add = [&](const PackedMatrix& m) {
    cost.layer_params += m.n() * m.k();
    cost.layer_bytes += m.bytes();
  };
  for (int layer = 0; layer < c.num_layers; ++layer) {
    if (spec.skipped(layer)) continue;
    const LayerWeights& l = w.layers[layer];
    for (const PackedMatrix* m : {&l.q, &l.k, &l.v, &l.o, &l.ple_gate, &l.ple_projection}) add(*m);
    for (size_t j = 0; j < c.granularities.size(); ++j) {
      if (c.granularities[j] > spec.ffn_width(layer)) break;
      add(l.gate[j]);
      add(l.up[j]);
      add(l.down[j]);
    }
  }
  cost.lm_head_params = w.lm_head.n() * w.lm_head.k();
  cost.lm_head_bytes = w.lm_head.bytes();
  return cost;
}

// Score and weighted-sum FLOPs of causal attention for `tokens` new tokens of
// one sequence that already holds `past` positions.
double AttentionFlops(const ModelConfig& c, const SubmodelSpec& spec, int64_t past,
                      int64_t tokens) {
  int kept = 0;
  for (int layer = 0; layer < c.num_layers; ++layer) kept += spec.skipped(layer) ? 0 : 1;
  // Token t sees past + t + 1 keys: q·k and p·v are 2 * head_dim FLOPs each.
  const double pairs = static_cast<double>(tokens) * past + tokens * (tokens + 1) / 2.0;
  return 4.0 * c.head_dim * c.num_heads * kept * pairs;
}

// Bytes of K and V a decode step reads: every kept layer, every KV head, every
// visible position of every sequence (its share of the pool's tiles: padding
// and int8 scales included).
double KvReadBytes(const ModelConfig& c, const SubmodelSpec& spec, const KvPool& pool, int64_t batch, int64_t length) {
  int kept = 0;
  for (int layer = 0; layer < c.num_layers; ++layer) kept += spec.skipped(layer) ? 0 : 1;
  return kept * c.num_kv_heads * pool.position_bytes() * batch * (length + 1);
}

struct Memory {
  size_t peak_rss = 0;
  size_t current_rss = 0;
  size_t ple_table_bytes = 0;
  int64_t ple_table_pages = 0;
  int64_t ple_pages_in_page_cache = 0;  // mincore: the file's pages in RAM, by anyone
  int64_t ple_pages_mapped = 0;         // pagemap: present in this process's page tables
  size_t packed_bytes = 0;
  size_t kv_pool_bytes = 0;
  size_t ple_cache_bytes = 0;
  size_t model_file_bytes = 0;
};

// The highest VmHWM seen before a reset: a limit measurement's buffer is kept
// out of the peak by sampling VmHWM before it and resetting after it.
size_t peak_rss_before_resets = 0;

// DRAM read bandwidth right before a decode measurement, on a buffer 8x the
// 32 MiB L3: on a shared VM the bandwidth drifts over minutes, and a ratio is
// only meaningful against a limit measured under the same conditions.
double MeasureLocalDramGbps() {
  peak_rss_before_resets = std::max(peak_rss_before_resets, PeakRssBytes());
  const double gbps = MeasureDramReadGbps(size_t{256} << 20, 3);
  ResetPeakRss();
  return gbps;
}

absl::StatusOr<Memory> MeasureMemory(Engine& engine) {
  const Model& model = engine.model();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  Memory m;
  m.peak_rss = std::max(peak_rss_before_resets, PeakRssBytes());
  m.current_rss = CurrentRssBytes();
  const TensorView& table = model.weights().ple_table;
  m.ple_table_bytes = table.nbytes;
  MF_ASSIGN_OR_RETURN(const PageCount table_pages, PagesInPageCache(table.data, table.nbytes));
  m.ple_table_pages = table_pages.total;
  m.ple_pages_in_page_cache = table_pages.in_page_cache;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(table.data) / page * page;
  const size_t pages = static_cast<size_t>(table_pages.total);
  // mincore counts page-cache pages whoever read them; pagemap's present bit
  // (bit 63) counts the pages this process has actually faulted in.
  const int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    std::vector<uint64_t> entries(pages);
    const ssize_t want = static_cast<ssize_t>(pages * sizeof(uint64_t));
    const ssize_t got = pread(fd, entries.data(), want, static_cast<off_t>(begin / page * 8));
    close(fd);
    if (got == want) {
      for (uint64_t e : entries) m.ple_pages_mapped += (e >> 63) & 1;
    } else {
      m.ple_pages_mapped = -1;
    }
  } else {
    m.ple_pages_mapped = -1;
  }
  m.packed_bytes = model.packed_bytes();
  m.kv_pool_bytes = engine.kv_pool().bytes();
  m.ple_cache_bytes = engine.ple_cache().stats().bytes;
  m.model_file_bytes = model.file().file().size();
  return m;
}

Json MemoryJson(const Memory& m) {
  return Json{{"peak_rss_bytes", m.peak_rss},
              {"current_rss_bytes", m.current_rss},
              {"model_file_bytes", m.model_file_bytes},
              {"packed_weight_bytes", m.packed_bytes},
              {"kv_pool_bytes", m.kv_pool_bytes},
              {"ple_cache_bytes", m.ple_cache_bytes},
              {"ple_table_bytes", m.ple_table_bytes},
              {"ple_table_pages", m.ple_table_pages},
              {"ple_table_pages_in_page_cache", m.ple_pages_in_page_cache},
              {"ple_table_pages_mapped_by_process", m.ple_pages_mapped}};
}

double Mib(size_t bytes) { return bytes / 1048576.0; }

void PrintMemory(const char* when, const Memory& m) {
  std::printf("%-10s peak RSS since load %8.1f MiB  RSS %8.1f MiB  packed weights %8.1f MiB  KV pool %7.1f MiB"
              "  PLE cache %6.1f MiB\n",
              when, Mib(m.peak_rss), Mib(m.current_rss), Mib(m.packed_bytes), Mib(m.kv_pool_bytes),
              Mib(m.ple_cache_bytes));
  std::printf("%-10s PLE table %.1f MiB mapped (%ld pages): %ld in page cache (%.2f%%), "
              "%ld mapped by this process (%.2f%%)\n",
              "", Mib(m.ple_table_bytes), m.ple_table_pages, m.ple_pages_in_page_cache,
              100.0 * m.ple_pages_in_page_cache / m.ple_table_pages, m.ple_pages_mapped,
              100.0 * m.ple_pages_mapped / m.ple_table_pages);
}

struct Options {
  bool profile;
  std::vector<int> prompts;
  std::vector<int> batches;
  int prefill_repeats;
  int cold_repeats;
  int decode_warmup;
  int decode_steps;
};

struct Results {
  Json prefill = Json::array();
  Json decode = Json::array();
  Json batch_cost = Json::array();
  Json profiles = Json::array();  // --profile: ms per step by stage
};

// Milliseconds per step of each stage, as JSON (kStageNames order).
Json ProfileJson(const std::string& kind, const SubmodelSpec& spec, int prompt, int batch,
                 const StageProfile& profile) {
  Json stages = Json::object();
  double total = 0;
  for (int i = 0; i < static_cast<int>(Stage::kCount); ++i) {
    const double ms = profile.seconds[i] * 1e3 / std::max<int64_t>(1, profile.steps);
    stages[kStageNames[i]] = ms;
    total += ms;
  }
  return Json{{"kind", kind}, {"spec", spec.name()}, {"prompt", prompt}, {"batch", batch},
              {"steps", profile.steps}, {"total_ms", total}, {"stage_ms", stages}};
}

// Runs a prefill of `prompt` on a new sequence; returns its wall time.
absl::StatusOr<double> TimePrefill(Engine& engine, Sequence& sequence,
                                   const std::vector<int32_t>& prompt) {
  const StepInput input{&sequence, prompt};
  const double start = NowSeconds();
  MF_RETURN_IF_ERROR(engine.Step({&input, 1}).status());
  return NowSeconds() - start;
}

// A fresh engine per repeat, so the PLE cache holds none of the prompt's
// tokens. A first prompt of one other token sizes the scratch buffers and
// creates the oneDNN primitives, so what remains is the PLE-miss cost.
absl::StatusOr<std::vector<double>> ColdPrefills(std::shared_ptr<const Model> model,
                                                 const SubmodelSpec& spec,
                                                 const std::vector<int32_t>& prompt,
                                                 int32_t filler_token, int repeats) {
  std::vector<double> seconds;
  EngineOptions options;
  options.kv_block_tokens = kBlockTokens;
  options.kv_blocks = 2 * ((static_cast<int64_t>(prompt.size()) + kBlockTokens - 1) / kBlockTokens);
  const std::vector<int32_t> filler(prompt.size(), filler_token);
  for (int r = 0; r < repeats; ++r) {
    MF_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(model, options));
    {
      std::unique_ptr<Sequence> warm = engine->NewSequence(spec);
      MF_RETURN_IF_ERROR(TimePrefill(*engine, *warm, filler).status());
    }
    std::unique_ptr<Sequence> sequence = engine->NewSequence(spec);
    MF_ASSIGN_OR_RETURN(double s, TimePrefill(*engine, *sequence, prompt));
    seconds.push_back(s);
  }
  return seconds;
}

absl::Status BenchSpec(Engine& engine, std::shared_ptr<const Model> model, const SubmodelSpec& spec,
                       const std::vector<int32_t>& full_prompt, int32_t filler_token,
                       const Options& options, Results& results) {
  const ModelConfig& c = model->config();
  const SpecCost cost = CostOf(*model, spec);
  const int max_batch = *std::max_element(options.batches.begin(), options.batches.end());
  for (int prompt_length : options.prompts) {
    const std::vector<int32_t> prompt(full_prompt.begin(), full_prompt.begin() + prompt_length);
    // Untimed: puts the prompt's tokens into the PLE cache, sizes the scratch.
    {
      std::unique_ptr<Sequence> warm = engine.NewSequence(spec);
      MF_RETURN_IF_ERROR(TimePrefill(engine, *warm, prompt).status());
    }
    // Warm prefills; the sequences are kept as the decode batch.
    std::vector<std::unique_ptr<Sequence>> sequences;
    std::vector<double> prefill_seconds;
    const int count = std::max(options.prefill_repeats, max_batch);
    StageProfile profile;
    if (options.profile) engine.set_profile(&profile);
    for (int i = 0; i < count; ++i) {
      sequences.push_back(engine.NewSequence(spec));
      MF_ASSIGN_OR_RETURN(double s, TimePrefill(engine, *sequences.back(), prompt));
      prefill_seconds.push_back(s);
    }
    engine.set_profile(nullptr);
    if (options.profile) results.profiles.push_back(ProfileJson("prefill", spec, prompt_length, 1, profile));
    std::vector<double> cold_seconds;
    if (options.cold_repeats > 0) {
      MF_ASSIGN_OR_RETURN(cold_seconds,
                          ColdPrefills(model, spec, prompt, filler_token, options.cold_repeats));
    }
    // Logits come out for the last token only, so the LM head runs on one row.
    const double flops = 2.0 * cost.layer_params * prompt_length + 2.0 * cost.lm_head_params +
                         AttentionFlops(c, spec, 0, prompt_length);
    const double median = Median(prefill_seconds), best = Best(prefill_seconds);
    const double gflops = flops / median * 1e-9;
    Json row{{"spec", spec.name()},
             {"prompt", prompt_length},
             {"repeats", prefill_seconds.size()},
             {"seconds_median", median},
             {"seconds_best", best},
             {"tokens_per_s_median", prompt_length / median},
             {"tokens_per_s_best", prompt_length / best},
             {"flops", flops},
             {"attention_flops", AttentionFlops(c, spec, 0, prompt_length)},
             {"gflops_median", gflops}};
    if (!cold_seconds.empty()) {
      row["cold_seconds_median"] = Median(cold_seconds);
      row["cold_tokens_per_s_median"] = prompt_length / Median(cold_seconds);
    }
    std::fprintf(stderr, "prefill %s %d: %.1f tok/s\n", spec.name().c_str(), prompt_length,
                 prompt_length / median);
    results.prefill.push_back(row);

    double step_at_1 = 0, step_at_16 = 0, matmul_flops_16 = 0, attention_flops_16 = 0, bytes_16 = 0;
    for (int batch : options.batches) {
      const double local_dram_gbps = MeasureLocalDramGbps();
      std::vector<int32_t> tokens(batch);
      std::vector<StepInput> inputs;
      for (int i = 0; i < batch; ++i) {
        // Rewinding reuses the prefilled KV: each batch decodes from the prompt.
        sequences[i]->kv.set_length(prompt_length);
        inputs.push_back({sequences[i].get(), absl::Span<const int32_t>(&tokens[i], 1)});
      }
      std::vector<double> step_seconds;
      profile.Clear();
      for (int step = 0; step < options.decode_warmup + options.decode_steps; ++step) {
        // Tokens of the prompt: PLE-cache hits, as after warm-up in a server.
        for (int i = 0; i < batch; ++i) tokens[i] = prompt[(7 * step + 13 * i) % prompt_length];
        if (options.profile && step == options.decode_warmup) engine.set_profile(&profile);
        const double start = NowSeconds();
        MF_RETURN_IF_ERROR(engine.Step(inputs).status());
        if (step >= options.decode_warmup) step_seconds.push_back(NowSeconds() - start);
      }
      engine.set_profile(nullptr);
      if (options.profile) {
        results.profiles.push_back(ProfileJson("decode", spec, prompt_length, batch, profile));
      }
      const double step = Median(step_seconds);
      const int64_t mid_length = prompt_length + options.decode_warmup + options.decode_steps / 2;
      const double weight_bytes = static_cast<double>(cost.layer_bytes + cost.lm_head_bytes);
      const double kv_bytes = KvReadBytes(c, spec, engine.kv_pool(), batch, mid_length);
      const double gbps = weight_bytes / step * 1e-9;
      std::fprintf(stderr, "decode %s %d x%d: %.2f ms/step\n", spec.name().c_str(), prompt_length,
                   batch, step * 1e3);
      results.decode.push_back(Json{{"spec", spec.name()},
                                    {"prompt", prompt_length},
                                    {"batch", batch},
                                    {"steps", step_seconds.size()},
                                    {"step_seconds_median", step},
                                    {"step_seconds_best", Best(step_seconds)},
                                    {"tokens_per_s", batch / step},
                                    {"weight_bytes_per_step", weight_bytes},
                                    {"weight_gbps", gbps},
                                    {"kv_bytes_per_step", kv_bytes},
                                    {"weight_and_kv_gbps", (weight_bytes + kv_bytes) / step * 1e-9},
                                    {"dram_gbps_measured_before", local_dram_gbps}});
      if (batch == 1) step_at_1 = step;
      if (batch == 16) {
        step_at_16 = step;
        matmul_flops_16 = 2.0 * (cost.layer_params + cost.lm_head_params) * batch;
        attention_flops_16 = batch * AttentionFlops(c, spec, mid_length, 1);
        bytes_16 = weight_bytes + kv_bytes;
      }
    }
    for (auto& sequence : sequences) sequence->kv.set_length(prompt_length);
    if (step_at_1 > 0 && step_at_16 > 0) {
      results.batch_cost.push_back(Json{{"spec", spec.name()},
                                        {"prompt", prompt_length},
                                        {"step_seconds_1", step_at_1},
                                        {"step_seconds_16", step_at_16},
                                        {"matmul_flops_16", matmul_flops_16},
                                        {"attention_flops_16", attention_flops_16},
                                        {"bytes_16", bytes_16},
                                        {"attention_on_amx", kernels_internal::AmxEnabled() &&
                                                                 kernels_internal::PagedAttentionAmxRuns(engine.kv_pool())},
                                        {"ratio_16_to_1", step_at_16 / step_at_1}});
    }
  }
  return absl::OkStatus();
}

// Fills in the ratios to `limits` and prints the tables.
void AddRatiosAndPrint(const ModelConfig& c, const MachineLimits& limits, int decode_steps,
                       Results& results) {
  const char* peak_name = c.dtype == DType::kBF16 ? "bf16" : "f32";
  const double peak = c.dtype == DType::kBF16 ? limits.bf16_gflops : limits.f32_gflops;
  std::printf("== prefill: one prompt in one Step on a fresh sequence; tok/s median and best "
              "(warm PLE cache); cold = a fresh PLE cache (median); GFLOP/s from the median; "
              "/peak = ratio to the %s matmul peak\n",
              peak_name);
  std::printf("%-7s %-4s %6s %10s %10s %10s %9s %7s\n", "prefill", "spec", "prompt", "tok/s", "best",
              "cold", "GFLOP/s", "/peak");
  for (Json& row : results.prefill) {
    row["peak_ratio"] = row["gflops_median"].get<double>() / peak;
    std::printf("prefill %-4s %6d %10.1f %10.1f %10.1f %9.1f %7.3f\n",
                row["spec"].get<std::string>().c_str(), row["prompt"].get<int>(),
                row["tokens_per_s_median"].get<double>(), row["tokens_per_s_best"].get<double>(),
                row.value("cold_tokens_per_s_median", 0.0), row["gflops_median"].get<double>(),
                row["peak_ratio"].get<double>());
  }
  std::printf("== decode: B sequences after the prompt, one token each per Step; step ms median and "
              "best of %d; weight MiB streamed per step; its GB/s and /DRAM from the median; KV MiB "
              "read per step (mid-run length); +kv = (weights + KV) / DRAM; locGB/s = DRAM read measured "
              "right before the row, /loc = wGB/s / locGB/s\n",
              decode_steps);
  std::printf("%-7s %-4s %6s %5s %9s %9s %9s %8s %8s %6s %8s %6s %7s %6s\n", "decode", "spec",
              "prompt", "batch", "step_ms", "best_ms", "tok/s", "wMiB", "wGB/s", "/DRAM", "kvMiB", "+kv",
              "locGB/s", "/loc");
  for (Json& row : results.decode) {
    row["bandwidth_ratio"] = row["weight_gbps"].get<double>() / limits.dram_read_gbps;
    row["bandwidth_ratio_with_kv"] = row["weight_and_kv_gbps"].get<double>() / limits.dram_read_gbps;
    row["bandwidth_ratio_local"] =
        row["weight_gbps"].get<double>() / row["dram_gbps_measured_before"].get<double>();
    std::printf("decode  %-4s %6d %5d %9.2f %9.2f %9.1f %8.1f %8.1f %6.3f %8.1f %6.3f %7.1f %6.3f\n",
                row["spec"].get<std::string>().c_str(), row["prompt"].get<int>(),
                row["batch"].get<int>(), row["step_seconds_median"].get<double>() * 1e3,
                row["step_seconds_best"].get<double>() * 1e3, row["tokens_per_s"].get<double>(),
                row["weight_bytes_per_step"].get<double>() / 1048576.0,
                row["weight_gbps"].get<double>(), row["bandwidth_ratio"].get<double>(),
                row["kv_bytes_per_step"].get<double>() / 1048576.0,
                row["bandwidth_ratio_with_kv"].get<double>(),
                row["dram_gbps_measured_before"].get<double>(), row["bandwidth_ratio_local"].get<double>());
  }
  std::printf("== step time at 16 rows / at 1 row; floors over the 1-row step: flops = the 16-row step's FLOPs "
              "at the measured peaks (matmuls at the %s peak, attention at the f32 one, or the bf16 one on AMX; no "
              "memory traffic), "
              "bytes = its weight and KV bytes at the measured DRAM read (no compute; what stays in cache "
              "can beat it)\n",
              peak_name);
  std::printf("%-10s %-4s %6s %7s %7s %7s\n", "batch-cost", "spec", "prompt", "16/1", "flops", "bytes");
  for (Json& row : results.batch_cost) {
    const double attention_peak = row["attention_on_amx"].get<bool>() ? limits.bf16_gflops : limits.f32_gflops;
    const double floor_seconds = row["matmul_flops_16"].get<double>() / (peak * 1e9) +
                                 row["attention_flops_16"].get<double>() / (attention_peak * 1e9);
    row["floor_ratio_16_to_1"] = floor_seconds / row["step_seconds_1"].get<double>();
    row["bytes_floor_ratio_16_to_1"] =
        row["bytes_16"].get<double>() / (limits.dram_read_gbps * 1e9) / row["step_seconds_1"].get<double>();
    std::printf("batch-cost %-4s %6d %7.2f %7.2f %7.2f\n", row["spec"].get<std::string>().c_str(),
                row["prompt"].get<int>(), row["ratio_16_to_1"].get<double>(),
                row["floor_ratio_16_to_1"].get<double>(), row["bytes_floor_ratio_16_to_1"].get<double>());
  }
  if (results.profiles.empty()) return;
  std::printf("== --profile: ms per step by stage (mean over the timed steps; total = their sum)\n");
  std::printf("%-7s %-4s %6s %5s %8s", "stage", "spec", "prompt", "batch", "total");
  for (const char* name : kStageNames) std::printf(" %*s", std::max<int>(8, std::strlen(name)), name);
  std::printf("\n");
  for (const Json& row : results.profiles) {
    std::printf("%-7s %-4s %6d %5d %8.2f", row["kind"].get<std::string>().c_str(),
                row["spec"].get<std::string>().c_str(), row["prompt"].get<int>(), row["batch"].get<int>(),
                row["total_ms"].get<double>());
    for (const char* name : kStageNames) {
      std::printf(" %*.2f", std::max<int>(8, std::strlen(name)), row["stage_ms"][name].get<double>());
    }
    std::printf("\n");
  }
}

void PrintLimits(const char* when, const MachineLimits& limits) {
  std::printf("%-10s DRAM read %.1f GB/s   bf16 matmul peak %.0f GFLOP/s   f32 matmul peak %.0f "
              "GFLOP/s\n",
              when, limits.dram_read_gbps, limits.bf16_gflops, limits.f32_gflops);
}

Json LimitsJson(const MachineLimits& limits) {
  return Json{{"dram_read_gbps", limits.dram_read_gbps},
              {"bf16_gflops", limits.bf16_gflops},
              {"f32_gflops", limits.f32_gflops}};
}

absl::Status Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  if (model_dir.empty()) return absl::InvalidArgumentError("--model_dir is required");
  Options options;
  options.profile = absl::GetFlag(FLAGS_profile);
  MF_ASSIGN_OR_RETURN(options.prompts, ParseIntList("prompts", absl::GetFlag(FLAGS_prompts)));
  MF_ASSIGN_OR_RETURN(options.batches, ParseIntList("batches", absl::GetFlag(FLAGS_batches)));
  options.prefill_repeats = std::max(1, absl::GetFlag(FLAGS_prefill_repeats));
  options.cold_repeats = std::max(0, absl::GetFlag(FLAGS_cold_repeats));
  options.decode_warmup = std::max(0, absl::GetFlag(FLAGS_decode_warmup));
  options.decode_steps = std::max(1, absl::GetFlag(FLAGS_decode_steps));
  const int max_prompt = *std::max_element(options.prompts.begin(), options.prompts.end());
  const int max_batch = *std::max_element(options.batches.begin(), options.batches.end());
  const int kv_context = absl::GetFlag(FLAGS_kv_context);
  if (max_prompt + options.decode_warmup + options.decode_steps > kv_context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt ", max_prompt, " + decode steps exceed --kv_context=", kv_context));
  }

  // Limits first, on an otherwise idle process: nothing of the model competes
  // for cache or memory yet. They are measured again at the end and the ratios
  // use the higher of the two, so a noisy neighbour during one measurement can
  // only make the ratios look worse, never better.
  const MachineLimits limits_start = MeasureMachineLimits();
  MachineLimits limits = limits_start;
  const int threads = omp_get_max_threads();
  std::printf("== machine limits (this process, %d OpenMP threads)\n", threads);
  PrintLimits("at start", limits_start);

  ResetPeakRss();
  if (absl::GetFlag(FLAGS_drop_file_cache)) {
    MF_RETURN_IF_ERROR(DropFromPageCache(model_dir + "/model.safetensors"));
  }
  const double load_start = NowSeconds();
  MF_ASSIGN_OR_RETURN(std::unique_ptr<Model> loaded, Model::Load(model_dir));
  std::shared_ptr<const Model> model = std::move(loaded);
  const ModelConfig c = model->config();  // a copy: the model is freed before the report
  EngineOptions engine_options;
  engine_options.kv_block_tokens = kBlockTokens;
  MF_ASSIGN_OR_RETURN(engine_options.kv_dtype, ParseKvDtype(absl::GetFlag(FLAGS_kv_dtype)));
  // Every decode sequence is alive at once, plus the warm-up sequence.
  engine_options.kv_blocks =
      static_cast<int64_t>(std::max(max_batch, options.prefill_repeats) + 1) *
      ((kv_context + kBlockTokens - 1) / kBlockTokens);
  MF_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(model, engine_options));
  const double load_seconds = NowSeconds() - load_start;
  const std::string kv_dtype(KvDtypeName(engine->kv_pool().dtype()));

  std::vector<SubmodelSpec> specs;
  std::vector<std::string> spec_names = absl::GetFlag(FLAGS_specs);
  if (spec_names.empty()) {
    for (size_t j = 0; j < c.granularities.size(); ++j) {
      spec_names.push_back(j < c.granularity_names.size() ? c.granularity_names[j]
                                                          : absl::StrCat(c.granularities[j]));
    }
  }
  for (const std::string& name : spec_names) {
    MF_ASSIGN_OR_RETURN(SubmodelSpec spec, SubmodelSpec::Parse(c, name));
    specs.push_back(std::move(spec));
  }
  const int64_t stored_params = [&] {
    int64_t n = 0;
    for (const std::string& name : model->file().Names()) {
      absl::StatusOr<TensorView> view = model->file().Get(name);
      if (view.ok()) n += view->num_elements();
    }
    return n;
  }();
  std::printf("== model %s: %ld layers, hidden %ld, FFN %ld, vocab %ld, %s, %.1f M stored "
              "parameters; loaded + packed in %.1f s\n",
              model_dir.c_str(), static_cast<long>(c.num_layers), static_cast<long>(c.hidden_size),
              static_cast<long>(c.intermediate_size), static_cast<long>(c.vocab_size),
              c.dtype == DType::kBF16 ? "bf16" : "f32", stored_params * 1e-6, load_seconds);
  MF_ASSIGN_OR_RETURN(const Memory after_load, MeasureMemory(*engine));
  PrintMemory("after load", after_load);

  // Token 3 (unk in the project's tokenizers) fills the cold-prefill warm-up,
  // so the prompt avoids it; everything else is uniform over the vocabulary.
  constexpr int32_t kFillerToken = 3;
  std::mt19937 rng(absl::GetFlag(FLAGS_seed));
  std::uniform_int_distribution<int32_t> token_dist(kFillerToken + 1,
                                                    static_cast<int32_t>(c.vocab_size - 1));
  std::vector<int32_t> prompt(max_prompt);
  for (int32_t& t : prompt) t = token_dist(rng);

  Results results;
  for (const SubmodelSpec& spec : specs) {
    MF_RETURN_IF_ERROR(BenchSpec(*engine, model, spec, prompt, kFillerToken, options, results));
  }
  MF_ASSIGN_OR_RETURN(const Memory at_end, MeasureMemory(*engine));
  // The engine's memory is freed first so the second measurement sees the
  // same cache and memory conditions as the first.
  engine.reset();
  model.reset();

  const MachineLimits limits_end = MeasureMachineLimits();
  limits.dram_read_gbps = std::max(limits_start.dram_read_gbps, limits_end.dram_read_gbps);
  double local_min = 1e30, local_max = 0;
  for (const Json& row : results.decode) {
    local_min = std::min(local_min, row["dram_gbps_measured_before"].get<double>());
    local_max = std::max(local_max, row["dram_gbps_measured_before"].get<double>());
  }
  limits.dram_read_gbps = std::max(limits.dram_read_gbps, local_max);
  limits.bf16_gflops = std::max(limits_start.bf16_gflops, limits_end.bf16_gflops);
  limits.f32_gflops = std::max(limits_start.f32_gflops, limits_end.f32_gflops);
  std::printf("== machine limits (this process, %d OpenMP threads); ratios use the highest "
              "measurement\n",
              threads);
  PrintLimits("at start", limits_start);
  PrintLimits("at end", limits_end);
  if (!results.decode.empty()) {
    std::printf("%-10s DRAM read before each decode measurement (256 MiB): %.1f .. %.1f GB/s\n",
                "", local_min, local_max);
  }
  std::printf("%-10s ratios to DRAM %.1f GB/s, bf16 peak %.0f GFLOP/s, f32 peak %.0f GFLOP/s\n",
              "used", limits.dram_read_gbps, limits.bf16_gflops, limits.f32_gflops);
  AddRatiosAndPrint(c, limits, options.decode_steps, results);
  std::printf("== memory\n");
  PrintMemory("after load", after_load);
  PrintMemory("at end", at_end);

  const std::string json_path = absl::GetFlag(FLAGS_json_out);
  if (!json_path.empty()) {
    Json out{{"runner", "engine"},
             {"model_dir", model_dir},
             {"dtype", c.dtype == DType::kBF16 ? "bf16" : "f32"},
             {"kv_dtype", kv_dtype},
             {"threads", threads},
             {"stored_parameters", stored_params},
             {"load_seconds", load_seconds},
             {"limits", LimitsJson(limits)},
             {"limits_at_start", LimitsJson(limits_start)},
             {"limits_at_end", LimitsJson(limits_end)},
             {"prefill", results.prefill},
             {"decode", results.decode},
             {"batch_cost", results.batch_cost},
             {"profiles", results.profiles},
             {"memory", {{"after_load", MemoryJson(after_load)}, {"at_end", MemoryJson(at_end)}}}};
    std::ofstream file(json_path);
    file << out.dump(2) << "\n";
    if (!file) return absl::InternalError(absl::StrCat("cannot write ", json_path));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace matformer::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Engine prefill / decode / memory benchmark, as ratios to measured machine limits.\n"
      "  engine_bench --model_dir DIR [--json_out FILE]");
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = matformer::bench::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
