// Request validation on arbitrary bytes: the first byte picks the RPC, the
// rest is parsed as its request message (GenerateRequest, ScoreRequest,
// TokenizeRequest) and run through the server's RequestBuilder, i.e. every
// field check, tokenization of text fields, submodel spec parsing and budget
// resolution, against deploy/tiers.json and a serving engine whose steps never
// run: the default model, or (bit 6 of the first byte) the tiny Gemma 3n
// checkpoint, whose chat template the chat prompts go through. An accepted
// request must be within the limits the scheduler relies on.
//
// libFuzzer builds (clang) get UBSan but not ASan: clang keeps the ASan
// runtime in the executable, and the tokenizer module, deep-bound to keep its
// own protobuf away from gRPC's, would then allocate past it
// (core/model/sentencepiece_adapter.cc). The replay of the corpus runs under
// GCC's ASan with the unit tests. The tokenizer alone runs under ASan in
// tokenizer_fuzz.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "core/engine.h"
#include "core/gemma3n/serving.h"
#include "matformer/v1/matformer.pb.h"
#include "server/requests.h"
#include "server/tiers.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using matformer::server::PreparedRequest;
using matformer::server::RequestBuilder;
using matformer::server::RequestLimits;

// Small limits, so that the boundaries are reachable by the fuzzer.
constexpr RequestLimits kLimits = {
    .max_prompt_tokens = 64, .max_new_tokens_limit = 32, .max_stop_sequences = 4, .max_stop_bytes = 16};

struct Fixture {
  std::unique_ptr<matformer::ServingEngine> engine;
  std::unique_ptr<RequestBuilder> builder;
};

// Engines with the smallest KV pool and no PLE cache: their steps never run.
std::unique_ptr<matformer::ServingEngine> LoadEngine(bool gemma3n) {
  if (gemma3n) {
    auto model = matformer::gemma3n::Model::Load(MATFORMER_SOURCE_DIR "/tests/data/gemma3n-tiny", {.ffn_granule = 32});
    FUZZ_CHECK(model.ok());
    auto engine = matformer::gemma3n::ServingModel::Create(*std::move(model), {.kv_blocks = 1, .ple_cache_bytes = 0});
    FUZZ_CHECK(engine.ok());
    return *std::move(engine);
  }
  auto model = matformer::Model::Load(MATFORMER_SOURCE_DIR "/models/default");
  FUZZ_CHECK(model.ok());
  auto engine = matformer::Engine::Create(*std::move(model), {.kv_blocks = 1, .ple_cache_bytes = 0});
  FUZZ_CHECK(engine.ok());
  return *std::move(engine);
}

const Fixture& GetFixture(bool gemma3n) {
  static const std::vector<matformer::server::Tier>* const tiers = [] {
    auto loaded = matformer::server::LoadTiers(MATFORMER_SOURCE_DIR "/deploy/tiers.json");
    FUZZ_CHECK(loaded.ok());
    return new std::vector<matformer::server::Tier>(*std::move(loaded));
  }();
  static Fixture* const fixtures = new Fixture[2];
  Fixture& f = fixtures[gemma3n ? 1 : 0];
  if (f.engine == nullptr) {
    f.engine = LoadEngine(gemma3n);
    f.builder = std::make_unique<RequestBuilder>(*f.engine, *tiers, kLimits);
  }
  return f;
}

// What the scheduler and engine rely on for an accepted request.
void CheckPrepared(const PreparedRequest& prepared, const matformer::ModelConfig& config) {
  const matformer::SchedulerRequest& request = prepared.request;
  FUZZ_CHECK(!request.prompt.empty() && request.prompt.size() <= static_cast<size_t>(kLimits.max_prompt_tokens));
  for (int32_t id : request.prompt) FUZZ_CHECK(id >= 0 && id < config.vocab_size);
  for (int32_t id : request.continuation) FUZZ_CHECK(id >= 0 && id < config.vocab_size);
  FUZZ_CHECK(request.continuation.size() <= static_cast<size_t>(kLimits.max_new_tokens_limit));
  FUZZ_CHECK(request.max_new_tokens >= 1 && request.max_new_tokens <= kLimits.max_new_tokens_limit);
  FUZZ_CHECK(request.stop_sequences.size() <= static_cast<size_t>(kLimits.max_stop_sequences));
  for (const std::string& stop : request.stop_sequences) {
    FUZZ_CHECK(!stop.empty() && stop.size() <= static_cast<size_t>(kLimits.max_stop_bytes));
  }
  if (request.budget.has_value()) FUZZ_CHECK(*request.budget >= absl::ZeroDuration());
  if (request.pinned_spec.has_value()) FUZZ_CHECK(request.pinned_spec->num_layers() == config.num_layers);
}

// REQUEST_FUZZ_VERBOSE=1: print each input's outcome (to see what the corpus reaches).
void Report(const absl::Status& status) {
  static const bool verbose = std::getenv("REQUEST_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "request_fuzz: %s\n", status.ToString().c_str());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const Fixture& fixture = GetFixture((data[0] & 0x40) != 0);
  const matformer::ModelConfig& config = fixture.engine->config();
  // A fixed clock; bit 7 of the selector gives the call a deadline one second out.
  const absl::Time now = absl::FromUnixSeconds(1800000000);
  const std::optional<absl::Time> deadline =
      (data[0] & 0x80) != 0 ? std::optional<absl::Time>(now + absl::Seconds(1)) : std::nullopt;
  const uint8_t* message = data + 1;
  const int message_size = static_cast<int>(size - 1);
  switch ((data[0] & 0x3f) % 3) {  // bits 0-5: the RPC; bit 6: the model; bit 7: a deadline
    case 0: {
      matformer::v1::GenerateRequest request;
      if (!request.ParseFromArray(message, message_size)) return 0;
      absl::StatusOr<PreparedRequest> prepared = fixture.builder->Generate(request, deadline, now);
      Report(prepared.status());
      if (prepared.ok()) CheckPrepared(*prepared, config);
      break;
    }
    case 1: {
      matformer::v1::ScoreRequest request;
      if (!request.ParseFromArray(message, message_size)) return 0;
      absl::StatusOr<PreparedRequest> prepared = fixture.builder->Score(request, deadline, now);
      Report(prepared.status());
      if (prepared.ok()) CheckPrepared(*prepared, config);
      break;
    }
    case 2: {
      matformer::v1::TokenizeRequest request;
      if (!request.ParseFromArray(message, message_size)) return 0;
      Report(fixture.builder->Tokenize(request).status());
      break;
    }
  }
  return 0;
}
