#include "server/responses.h"

#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "core/model/submodel.h"

namespace matformer::server {

void ToProto(absl::Duration duration, google::protobuf::Duration* out) {
  // Durations here are request timings and budgets: far inside the proto range.
  const int64_t seconds = absl::IDivDuration(duration, absl::Seconds(1), &duration);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(duration)));
}

void ToProto(const Candidate& candidate, v1::Submodel* out) {
  const SubmodelSpec& spec = candidate.spec;
  out->set_name(spec.name());
  for (int layer = 0; layer < spec.num_layers(); ++layer) out->add_layer_widths(spec.ffn_width(layer));
  for (int layer : spec.SkippedLayers()) out->add_skipped_layers(layer);
  out->set_active_params(spec.active_params());
  // A pinned spec outside quality.json has no measured loss (the planner marks it NaN).
  if (candidate.measured && std::isfinite(candidate.expected_loss)) out->set_expected_loss(candidate.expected_loss);
  if (!candidate.label.empty()) out->set_label(candidate.label);
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kEndOfSequence:
      return v1::FINISH_REASON_END_OF_SEQUENCE;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

namespace {

void FillTimings(const Timings& timings, v1::Timings* out) {
  ToProto(timings.queue, out->mutable_queue());
  ToProto(timings.time_to_first_token, out->mutable_time_to_first_token());
  ToProto(timings.decode, out->mutable_decode());
  ToProto(timings.total, out->mutable_total());
  ToProto(timings.predicted_total, out->mutable_predicted_total());
}

}  // namespace

void FillGenerateResponse(const SchedulerResult& result, const std::string& request_id, const ResolvedBudget& budget,
                          v1::GenerateResponse* out) {
  out->set_text(result.text);
  out->mutable_token_ids()->Add(result.tokens.begin(), result.tokens.end());
  out->set_finish_reason(ToProto(result.finish_reason));
  ToProto(result.plan.choice, out->mutable_submodel());
  FillTimings(result.timings, out->mutable_timings());
  out->set_request_id(request_id);
  if (budget.budget.has_value()) ToProto(*budget.budget, out->mutable_latency_budget());
}

void FillScoreResponse(const SchedulerResult& result, const std::vector<int32_t>& continuation,
                       const std::string& request_id, const ResolvedBudget& budget, v1::ScoreResponse* out) {
  out->mutable_token_ids()->Add(continuation.begin(), continuation.end());
  out->mutable_logprobs()->Add(result.continuation_logprobs.begin(), result.continuation_logprobs.end());
  out->set_total_logprob(
      std::accumulate(result.continuation_logprobs.begin(), result.continuation_logprobs.end(), 0.0));
  ToProto(result.plan.choice, out->mutable_submodel());
  FillTimings(result.timings, out->mutable_timings());
  out->set_request_id(request_id);
  if (budget.budget.has_value()) ToProto(*budget.budget, out->mutable_latency_budget());
}

v1::ModelInfo BuildModelInfo(ServingEngine& engine, const Planner& planner, const std::vector<Tier>& tiers,
                             const ServingDescription& serving) {
  const ModelConfig& config = engine.config();
  v1::ModelInfo info;
  info.set_model_dir(serving.model_dir);

  v1::Architecture* arch = info.mutable_architecture();
  arch->set_vocab_size(config.vocab_size);
  arch->set_hidden_size(config.hidden_size);
  arch->set_intermediate_size(config.intermediate_size);
  arch->set_num_layers(config.num_layers);
  arch->set_num_attention_heads(config.num_heads);
  arch->set_num_key_value_heads(config.num_kv_heads);
  arch->set_head_dim(config.head_dim);
  arch->set_hidden_size_per_layer_input(config.ple_dim);
  arch->set_max_position_embeddings(config.max_position_embeddings);
  arch->set_rope_theta(config.rope_theta);
  arch->set_rms_norm_eps(config.rms_norm_eps);
  arch->set_hidden_activation(config.activation == Activation::kSilu ? "silu" : "gelu_pytorch_tanh");
  arch->set_dtype(std::string(DTypeName(config.dtype)));
  arch->set_bos_token_id(config.bos_token_id);
  arch->set_eos_token_id(config.eos_token_id);
  arch->set_pad_token_id(config.pad_token_id);
  arch->set_tokenizer_pieces(engine.tokenizer().vocab_size());
  arch->set_family(std::string(engine.family()));

  for (size_t i = 0; i < config.granularities.size(); ++i) {
    v1::Granularity* granularity = info.add_granularities();
    granularity->set_name(config.granularity_names[i]);
    granularity->set_width(config.granularities[i]);
    granularity->set_active_params(
        SubmodelSpec::Uniform(config, absl::StrCat(config.granularities[i]))->active_params());
  }
  for (const Tier& tier : tiers) {
    v1::Tier* out = info.add_tiers();
    out->set_name(tier.name);
    ToProto(tier.budget, out->mutable_latency_budget());
    out->set_priority(tier.priority);
  }
  for (const Candidate& candidate : planner.candidates()) ToProto(candidate, info.add_quality_frontier());

  const PleCache::Stats ple = engine.ple_cache().stats();
  v1::PleCacheStats* ple_out = info.mutable_ple_cache();
  ple_out->set_entries(ple.entries);
  ple_out->set_bytes(ple.bytes);
  ple_out->set_max_bytes(engine.ple_cache().max_bytes());
  ple_out->set_hits(ple.hits);
  ple_out->set_misses(ple.misses);
  ple_out->set_evictions(ple.evictions);

  KvPool& pool = engine.kv_pool();
  v1::KvPoolStats* kv = info.mutable_kv_pool();
  kv->set_blocks_total(pool.num_blocks());
  kv->set_blocks_used(pool.used_blocks());
  kv->set_block_tokens(pool.block_tokens());
  kv->set_bytes(pool.bytes());
  kv->set_dtype(std::string(KvDtypeName(pool.dtype())));

  info.set_policy(serving.policy);
  info.set_over_budget(serving.over_budget);
  return info;
}

}  // namespace matformer::server
