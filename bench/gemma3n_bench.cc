// Speed of core/gemma3n (Hugging Face Gemma 3n) at real size, as ratios to this
// machine's limits measured in the same process (bench/machine_limits.h).
//
//   gemma3n_bench --model_dir build/bench/gemma3n-e2b     (bench/run_gemma3n.sh)
//
// Per slice (full; every FFN at half width; --skip_layers dropped):
//   prefill  one prompt per Step on a fresh KV cache: tok/s, GFLOP/s / bf16 peak;
//   decode   B sequences at the shortest prompt's context (and one at the
//            longest), one token each per Step: tok/s, and the packed weight
//            bytes the step multiplies per second / DRAM read bandwidth.
// Once: peak RSS after load, the PLE table's pages in RAM, and the PLE cache
// hit rate on held-out text tokenized by another tokenizer (a proxy; see
// bench/README.md, "Gemma 3n at real size").

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <tuple>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/machine_limits.h"
#include "bench/process_stats.h"
#include "core/gemma3n/model.h"
#include "core/model/tokenizer.h"
#include "core/ple/ple_cache.h"
#include "core/util/status_macros.h"

ABSL_FLAG(std::string, model_dir, "build/bench/gemma3n-e2b", "Gemma 3n checkpoint directory");
ABSL_FLAG(std::string, prompts, "128,512", "Prompt lengths; decode rows run at the shortest");
ABSL_FLAG(std::string, batches, "1,4,16", "Decode rows: sequences per step");
ABSL_FLAG(int, prefill_repeats, 3, "Timed prefills per (slice, prompt), after one untimed");
ABSL_FLAG(int, decode_steps, 12, "Timed decode steps per row, after one untimed");
ABSL_FLAG(std::string, skip_layers, "20,21,22,23,24", "Layers the third slice drops (empty: no such slice)");
ABSL_FLAG(std::string, heldout, "models/default/heldout.txt", "Held-out text: prompts and the PLE hit rate");
ABSL_FLAG(std::string, tokenizer, "models/default/tokenizer.model", "SentencePiece model for --heldout");
ABSL_FLAG(std::string, ple_cache_mib, "8,32,128", "PLE cache bounds (MiB) of the hit-rate measurement");
ABSL_FLAG(int, bench_ple_cache_mib, 256, "PLE cache bound (MiB) of the timed steps");

namespace matformer::bench {
namespace {

using gemma3n::Slice;

struct Options {
  std::vector<int> prompts, batches, skip, ple_mib;
  int repeats, steps, bench_ple_mib;
};

// Every flag checked before the 9 GB load; errors name the flag (exit 2).
absl::StatusOr<Options> ParseOptions() {
  Options o;
  MF_ASSIGN_OR_RETURN(o.prompts, ParseIntList("prompts", absl::GetFlag(FLAGS_prompts), 1));
  MF_ASSIGN_OR_RETURN(o.batches, ParseIntList("batches", absl::GetFlag(FLAGS_batches), 1));
  MF_ASSIGN_OR_RETURN(o.skip, ParseIntList("skip_layers", absl::GetFlag(FLAGS_skip_layers), 0));
  MF_ASSIGN_OR_RETURN(o.ple_mib, ParseIntList("ple_cache_mib", absl::GetFlag(FLAGS_ple_cache_mib), 1));
  std::sort(o.prompts.begin(), o.prompts.end());
  for (auto [flag, value, out] : {std::tuple{"prefill_repeats", absl::GetFlag(FLAGS_prefill_repeats), &o.repeats},
                                  {"decode_steps", absl::GetFlag(FLAGS_decode_steps), &o.steps},
                                  {"bench_ple_cache_mib", absl::GetFlag(FLAGS_bench_ple_cache_mib), &o.bench_ple_mib}}) {
    MF_ASSIGN_OR_RETURN(std::vector<int> v, ParseIntList(flag, absl::StrCat(value), 1));
    *out = v[0];
  }
  const std::string dir = absl::GetFlag(FLAGS_model_dir);
  absl::StatusOr<gemma3n::Config> c = gemma3n::LoadConfig(dir + "/config.json");
  if (!c.ok()) return absl::InvalidArgumentError(absl::StrCat("--model_dir=", dir, ": ", c.status().message()));
  if (!o.skip.empty()) {
    std::vector<int64_t> widths;
    for (int l = 0; l < c->num_layers; ++l) {
      if (std::find(o.skip.begin(), o.skip.end(), l) == o.skip.end()) widths.push_back(c->intermediate_size[l]);
    }
    absl::Status s = Slice::Create(*c, 2048, widths, o.skip).status();
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("--skip_layers: ", s.message()));
  }
  return o;
}

// What one step of a slice multiplies, counted from the packed matrices.
struct SliceCost {
  int64_t row_params = 0;   // per row: kept layers (K/V where owned, FFN slabs up to the width), AltUp in
  int64_t head_params = 0;  // per logits row: AltUp unembed + tied LM head
  size_t bytes = 0;         // packed bytes of all of them: what a decode step streams
  std::vector<int> kept;
};

SliceCost CostOf(const gemma3n::Model& model, const Slice& slice) {
  const gemma3n::Weights& w = model.weights();
  SliceCost cost;
  auto add = [&](const PackedMatrix& m, int64_t& params) {
    params += m.n() * m.k();
    cost.bytes += m.bytes();
  };
  for (const PackedMatrix& m : w.altup_projections) add(m, cost.row_params);
  for (const PackedMatrix& m : w.altup_unembed_projections) add(m, cost.head_params);
  add(w.lm_head, cost.head_params);
  for (int l = 0; l < model.config().num_layers; ++l) {
    if (slice.skipped[l]) continue;
    cost.kept.push_back(l);
    const gemma3n::LayerWeights& lw = w.layers[l];
    for (const PackedMatrix* m : {&lw.q, &lw.o, &lw.laurel_left, &lw.laurel_right, &lw.per_layer_input_gate,
                                  &lw.per_layer_projection}) {
      add(*m, cost.row_params);
    }
    if (slice.kv_source[l] == l) {
      add(lw.k, cost.row_params);
      add(lw.v, cost.row_params);
    }
    for (size_t j = 0; j < lw.ffn_slab_ends.size() && lw.ffn_slab_ends[j] <= slice.ffn_width[l]; ++j) {
      for (const PackedMatrix* m : {&lw.gate[j], &lw.up[j], &lw.down[j]}) add(*m, cost.row_params);
    }
  }
  return cost;
}

// Query-key pairs of kept layer l for tokens at positions [past, past + T).
double Pairs(const gemma3n::Config& c, int l, int64_t past, int64_t T) {
  const int64_t window = c.layer_types[l] == gemma3n::LayerType::kSliding ? c.sliding_window : INT64_MAX;
  double pairs = 0;
  for (int64_t p = past; p < past + T; ++p) pairs += static_cast<double>(std::min(p + 1, window));
  return pairs;
}

// Fraction of the PLE table's pages in RAM (the file was dropped from the
// page cache before loading, so these are the pages this run read).
double PleTableResident(const gemma3n::Model& model) {
  const TensorView& t = model.weights().per_layer_embed;
  absl::StatusOr<PageCount> pages = PagesInPageCache(t.data, t.nbytes);
  return pages.ok() ? pages->in_page_cache / static_cast<double>(pages->total) : -1;
}

// Bytes of the checkpoint's mapping resident in this process (smaps "Rss" of
// the mapping that holds `address`): the loader released the pages of what it
// packed, so these are the embedding and PLE table rows this run read.
double MappingRssBytes(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  const uintptr_t a = reinterpret_cast<uintptr_t>(address);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2) inside = lo <= a && a < hi;
    else if (inside && line.rfind("Rss:", 0) == 0) return std::stod(line.substr(4)) * 1024;
  }
  return -1;
}

struct PrefillRow { std::string slice; int prompt; double seconds, best, flops, miss; };
struct DecodeRow { std::string slice; int context, batch; double seconds, weight_bytes, kv_bytes, local_gbps; };

absl::Status BenchSlice(const gemma3n::Model& model, const Slice& slice, const Options& o,
                        const std::vector<int32_t>& text, KvPool& pool, PleCache& ple,
                        std::vector<PrefillRow>& prefills, std::vector<DecodeRow>& decodes) {
  const gemma3n::Config& c = model.config();
  const SliceCost cost = CostOf(model, slice);
  const int p0 = o.prompts.front(), max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  auto window = [&](int i, int P) { return text.data() + (static_cast<size_t>(i) * P) % (text.size() - P - o.steps); };
  std::vector<std::unique_ptr<gemma3n::KvCache>> short_caches;  // decode at p0
  std::unique_ptr<gemma3n::KvCache> long_cache;                // decode at the longest prompt
  for (int P : o.prompts) {
    const int count = std::max(o.repeats + 1, P == p0 ? max_batch : 0);
    const PleCache::Stats before = ple.stats();
    std::vector<double> seconds;
    for (int i = 0; i < count; ++i) {
      auto cache = std::make_unique<gemma3n::KvCache>(&pool);
      const gemma3n::StepInput in{.slice = &slice, .cache = cache.get(), .tokens = {window(i, P), size_t(P)}};
      const double start = NowSeconds();
      MF_RETURN_IF_ERROR(model.Step({&in, 1}, {.ple_cache = &ple}).status());
      if (i > 0) seconds.push_back(NowSeconds() - start);  // the first sizes oneDNN's primitives
      if (P == p0) short_caches.push_back(std::move(cache));
      else if (i == count - 1) long_cache = std::move(cache);
    }
    const PleCache::Stats after = ple.stats();
    const double miss = double(after.misses - before.misses) / (after.hits + after.misses - before.hits - before.misses);
    double attention = 0;
    for (int l : cost.kept) attention += 4.0 * c.head_dim * c.num_heads * Pairs(c, l, 0, P);
    const gemma3n::Weights& w = model.weights();
    const double flops = 2.0 * (double(P) * cost.row_params + cost.head_params) + attention +
                         2.0 * miss * P * w.per_layer_model_projection.n() * w.per_layer_model_projection.k();
    prefills.push_back({slice.name, P, Median(seconds), *std::min_element(seconds.begin(), seconds.end()), flops, miss});
    std::fprintf(stderr, "prefill %s %d: %.2f s\n", slice.name.c_str(), P, Median(seconds));
  }
  // Decode rows: rewind prefilled caches (their K/V stay valid) and feed tokens of the short prompts (PLE hits).
  auto decode = [&](std::vector<gemma3n::KvCache*> caches, int context) -> absl::Status {
    const int B = static_cast<int>(caches.size());
    const double local_gbps = MeasureDramReadGbps(size_t{256} << 20, 3);
    std::vector<int32_t> tokens(B);
    std::vector<gemma3n::StepInput> inputs;
    for (int i = 0; i < B; ++i) {
      caches[i]->kv().set_length(context);
      inputs.push_back({.slice = &slice, .cache = caches[i], .tokens = {&tokens[i], 1}});
    }
    std::vector<double> seconds;
    for (int step = 0; step <= o.steps; ++step) {
      for (int i = 0; i < B; ++i) tokens[i] = window(i, p0)[step];
      const double start = NowSeconds();
      MF_RETURN_IF_ERROR(model.Step(inputs, {.ple_cache = &ple}).status());
      if (step > 0) seconds.push_back(NowSeconds() - start);
    }
    double kv = 0;  // f32 K and V of every visible position, per kept layer (shared layers read their source's)
    for (int l : cost.kept) kv += 2.0 * c.num_kv_heads * c.head_dim * 4 * Pairs(c, l, context + o.steps / 2, 1) * B;
    decodes.push_back({slice.name, context, B, Median(seconds), double(cost.bytes), kv, local_gbps});
    std::fprintf(stderr, "decode %s %d x%d: %.1f ms\n", slice.name.c_str(), context, B, Median(seconds) * 1e3);
    return absl::OkStatus();
  };
  for (int B : o.batches) {
    std::vector<gemma3n::KvCache*> caches;
    for (int i = 0; i < B; ++i) caches.push_back(short_caches[i].get());
    MF_RETURN_IF_ERROR(decode(caches, p0));
  }
  if (long_cache) MF_RETURN_IF_ERROR(decode({long_cache.get()}, o.prompts.back()));
  return absl::OkStatus();
}

absl::Status Run(const Options& o) {
  const std::string dir = absl::GetFlag(FLAGS_model_dir);
  MF_RETURN_IF_ERROR(DropFromPageCache(dir + "/model.safetensors"));
  const double load_start = NowSeconds();
  MF_ASSIGN_OR_RETURN(std::unique_ptr<gemma3n::Model> model, gemma3n::Model::Load(dir, {.ffn_granule = 2048}));
  const double load_seconds = NowSeconds() - load_start;
  const gemma3n::Config c = model->config();  // a copy: the model is freed before the report
  const gemma3n::Weights& w = model->weights();
  const double peak_after_load = static_cast<double>(PeakRssBytes()), ple_resident_after_load = PleTableResident(*model);
  const double mapping_after_load = MappingRssBytes(w.per_layer_embed.data);
  // Limits after the load (their 1 GiB buffer would be the peak RSS otherwise) and at the end; ratios use the higher.
  const MachineLimits start = MeasureMachineLimits();

  // Held-out text -> the default model's token ids -> spread injectively over the Gemma PLE vocabulary.
  std::ifstream file(absl::GetFlag(FLAGS_heldout));
  if (!file) return absl::NotFoundError(absl::StrCat("--heldout: cannot open ", absl::GetFlag(FLAGS_heldout)));
  std::stringstream held;
  held << file.rdbuf();
  MF_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(absl::GetFlag(FLAGS_tokenizer), c.vocab_size));
  const int stride = std::max<int64_t>(1, c.vocab_size_per_layer_input / tokenizer->vocab_size());
  std::vector<int32_t> text;
  for (absl::string_view line : absl::StrSplit(held.str(), '\n', absl::SkipEmpty())) {
    MF_ASSIGN_OR_RETURN(std::vector<int> ids, tokenizer->Encode(line));
    for (int id : ids) text.push_back(id * stride);
  }
  const int max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  if (text.size() < size_t(std::max(max_batch, o.repeats + 1)) * o.prompts.back() + o.steps + 1) {
    return absl::InvalidArgumentError(absl::StrCat("--heldout: ", text.size(), " tokens, too few for the prompts"));
  }

  std::vector<Slice> slices = {Slice::Full(c)};
  std::vector<int64_t> half, kept_widths;
  for (int l = 0; l < c.num_layers; ++l) {
    half.push_back(std::max<int64_t>(2048, c.intermediate_size[l] / 2 / 2048 * 2048));
    if (std::find(o.skip.begin(), o.skip.end(), l) == o.skip.end()) kept_widths.push_back(c.intermediate_size[l]);
  }
  slices[0].name = "full";
  MF_ASSIGN_OR_RETURN(slices.emplace_back(), model->MakeSlice(half, {}, "half-ffn"));
  if (!o.skip.empty()) {
    MF_ASSIGN_OR_RETURN(slices.emplace_back(), model->MakeSlice(kept_widths, o.skip, absl::StrCat("skip-", absl::GetFlag(FLAGS_skip_layers))));
  }
  const auto blocks = [&](int P) { return (P + o.steps + 2 + 15) / 16; };
  std::unique_ptr<KvPool> pool = model->NewKvPool(max_batch * blocks(o.prompts.front()) + 2 * blocks(o.prompts.back()), 16);
  const int64_t ple_floats = int64_t{c.num_layers} * c.hidden_size_per_layer_input;
  PleCache ple(ple_floats, size_t(o.bench_ple_mib) << 20);
  std::vector<PrefillRow> prefills;
  std::vector<DecodeRow> decodes;
  for (const Slice& slice : slices) MF_RETURN_IF_ERROR(BenchSlice(*model, slice, o, text, *pool, ple, prefills, decodes));
  const double rss_at_end = static_cast<double>(CurrentRssBytes()), ple_resident_at_end = PleTableResident(*model);
  const double mapping_at_end = MappingRssBytes(w.per_layer_embed.data);
  const size_t kv_pool_bytes = pool->bytes(), plmp_bytes = w.per_layer_model_projection.bytes();
  const size_t packed_bytes = CostOf(*model, slices[0]).bytes + plmp_bytes;
  const double table_bytes = w.per_layer_embed.nbytes, bytes_per_weight = w.lm_head.dtype() == DType::kBF16 ? 2 : 4;
  std::vector<std::pair<std::string, double>> active;  // Slice::ActiveParams x bytes per weight, the cross-check
  for (const Slice& s : slices) active.push_back({s.name, s.ActiveParams(c) * bytes_per_weight});
  pool.reset();
  model.reset();
  const MachineLimits end = MeasureMachineLimits();
  double dram = std::max(start.dram_read_gbps, end.dram_read_gbps);
  for (const DecodeRow& r : decodes) dram = std::max(dram, r.local_gbps);
  const double peak = std::max(start.bf16_gflops, end.bf16_gflops);

  std::printf("== %s: %d layers, d %ld, FFN %ld, vocab %ld; loaded + packed in %.1f s\n", dir.c_str(), c.num_layers,
              long(c.hidden_size), long(c.intermediate_size[0]), long(c.vocab_size), load_seconds);
  std::printf("limits  at start: DRAM %.1f GB/s, bf16 %.0f GFLOP/s; at end: %.1f GB/s, %.0f GFLOP/s; "
              "ratios use DRAM %.1f GB/s (incl. the 256 MiB reads before each decode row), bf16 %.0f GFLOP/s\n",
              start.dram_read_gbps, start.bf16_gflops, end.dram_read_gbps, end.bf16_gflops, dram, peak);
  std::printf("\n| slice | prompt | tok/s (median) | best | GFLOP/s | / bf16 peak | PLE misses |\n|---|---|---|---|---|---|---|\n");
  for (const PrefillRow& r : prefills) {
    std::printf("| %s | %d | %.1f | %.1f | %.1f | %.3f | %.0f%% |\n", r.slice.c_str(), r.prompt, r.prompt / r.seconds,
                r.prompt / r.best, r.flops / r.seconds * 1e-9, r.flops / r.seconds * 1e-9 / peak, 100 * r.miss);
  }
  std::printf("\n| slice | context | batch | step ms | tok/s | weight MiB/step | weight GB/s / DRAM | / DRAM just before | KV MiB/step | (weights+KV) / DRAM |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n");
  for (const DecodeRow& r : decodes) {
    const double gbps = r.weight_bytes / r.seconds * 1e-9;
    std::printf("| %s | %d | %d | %.1f | %.2f | %.0f | %.3f | %.3f (%.1f GB/s) | %.1f | %.3f |\n", r.slice.c_str(),
                r.context, r.batch, r.seconds * 1e3, r.batch / r.seconds, r.weight_bytes / 1048576, gbps / dram,
                gbps / r.local_gbps, r.local_gbps, r.kv_bytes / 1048576, (r.weight_bytes + r.kv_bytes) / r.seconds * 1e-9 / dram);
  }
  std::printf("\nActiveParams x %.0f bytes (incl. per_layer_model_projection and norms, for comparison):", bytes_per_weight);
  for (const auto& [name, bytes] : active) std::printf(" %s %.0f MiB;", name.c_str(), bytes / 1048576);
  std::printf(" per_layer_model_projection (PLE misses only) %.0f MiB\n", plmp_bytes / 1048576.0);
  std::printf("\nmemory (MiB): peak RSS after load (VmHWM) %.0f; packed weights %.0f; checkpoint mapping resident "
              "in this process %.0f after load, %.0f at end; RSS at end %.0f (KV pool %.0f, PLE cache bound %d)\n"
              "PLE table: %.0f MiB mapped; its pages in the page cache (mincore; read-around included): %.2f%% after "
              "load, %.2f%% at end\n",
              peak_after_load / 1048576, packed_bytes / 1048576.0, mapping_after_load / 1048576, mapping_at_end / 1048576,
              rss_at_end / 1048576, kv_pool_bytes / 1048576.0, o.bench_ple_mib, table_bytes / 1048576,
              100 * ple_resident_after_load, 100 * ple_resident_at_end);

  // PLE cache hit rate: the held-out stream through a PleCache of each bound, as PerLayerInputs uses it.
  std::vector<int32_t> distinct = text;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  std::printf("\nPLE cache over %zu held-out tokens (%zu distinct; %ld floats = %.0f KiB per entry):\n"
              "| bound MiB | entries | hit rate, all tokens | hit rate, second half |\n|---|---|---|---|\n",
              text.size(), distinct.size(), long(ple_floats), ple_floats * 4 / 1024.0);
  std::vector<float> row(ple_floats);
  for (int mib : o.ple_mib) {
    PleCache cache(ple_floats, size_t(mib) << 20);
    PleCache::Stats half_way;
    for (size_t i = 0; i < text.size(); ++i) {
      if (i == text.size() / 2) half_way = cache.stats();
      if (!cache.Lookup(text[i], row.data())) cache.Insert(text[i], row.data());
    }
    const PleCache::Stats s = cache.stats();
    std::printf("| %d | %ld | %.3f | %.3f |\n", mib, long((size_t(mib) << 20) / (ple_floats * 4)),
                double(s.hits) / (s.hits + s.misses), double(s.hits - half_way.hits) / (s.hits + s.misses - half_way.hits - half_way.misses));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace matformer::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Gemma 3n speed at real size, as ratios to measured machine limits.\n"
                               "  gemma3n_bench --model_dir build/bench/gemma3n-e2b");
  absl::ParseCommandLine(argc, argv);
  const absl::StatusOr<matformer::bench::Options> options = matformer::bench::ParseOptions();
  if (!options.ok()) {
    std::fprintf(stderr, "gemma3n_bench: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  const absl::Status status = matformer::bench::Run(*options);
  if (!status.ok()) {
    std::fprintf(stderr, "gemma3n_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
