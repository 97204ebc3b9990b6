#include "core/engine.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/kernels/attention.h"
#include "core/kernels/ops.h"
#include "core/util/stage_profile.h"
#include "core/util/status_macros.h"

namespace matformer {

// Activation buffers of one step, grown to the largest step seen and reused.
struct Engine::Scratch {
  std::vector<float> hidden;     // [T, d] the residual stream, in input row order
  std::vector<float> ple;        // [T, L * d_ple] per-layer inputs of every row
  std::vector<float> normed;     // [R, d] gathered, normalised rows of a layer
  std::vector<float> q, k, v;    // [R, H * hd], [R, KV * hd]
  std::vector<float> attention;  // [R, H * hd]
  std::vector<float> delta;      // [R, d] a sublayer's output before the residual add
  std::vector<float> gate, up;   // [R, d_ff]
  std::vector<float> ple_gate;   // [R, d_ple]
  std::vector<int64_t> gather;   // gathered row -> input row
  std::vector<int64_t> row_width;
  std::vector<size_t> row_input;                  // [T] input row -> index of its StepInput
  std::vector<int64_t> row_position;              // [T] its position in its sequence
  std::vector<float> rope_cos, rope_sin;          // [T, head_dim / 2] its rotary angles

  static float* Sized(std::vector<float>& buffer, int64_t size) {
    if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
    return buffer.data();
  }
};

Engine::Engine(std::shared_ptr<const Model> model, const EngineOptions& options)
    : model_(std::move(model)), scratch_(std::make_unique<Scratch>()) {
  const ModelConfig& c = model_->config();
  kv_pool_ = std::make_unique<KvPool>(c.num_layers, c.num_kv_heads, c.head_dim, options.kv_block_tokens,
                                      options.kv_blocks, options.kv_dtype.value_or(KvDtypeOf(c.dtype)));
  ple_cache_ = std::make_unique<PleCache>(static_cast<int64_t>(c.num_layers) * c.ple_dim, options.ple_cache_bytes);
  for (int i = 0; i < c.head_dim / 2; ++i) {
    rope_inv_freq_.push_back(
        static_cast<float>(1.0 / std::pow(c.rope_theta, 2.0 * i / static_cast<double>(c.head_dim))));
  }
}

Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::shared_ptr<const Model> model,
                                                       const EngineOptions& options) {
  MF_RETURN_IF_ERROR(CheckCpuRunsKernels());
  MF_RETURN_IF_ERROR(CheckKvPoolOptions(options.kv_blocks, options.kv_block_tokens));
  return std::unique_ptr<Engine>(new Engine(std::move(model), options));
}

absl::Status Engine::Validate(absl::Span<const StepInput> inputs) const {
  const ModelConfig& c = config();
  absl::flat_hash_set<const Sequence*> seen;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const StepInput& input = inputs[i];
    if (input.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("step input ", i, ": no tokens"));
    }
    if (!seen.insert(input.sequence).second) {
      return absl::InvalidArgumentError(absl::StrCat("step input ", i, ": sequence appears twice in one step"));
    }
    if (input.sequence->spec.num_layers() != c.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("step input ", i, ": spec is for another model"));
    }
    for (int32_t token : input.tokens) {
      if (token < 0 || token >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", token, " outside [0, ", c.vocab_size, ")"));
      }
    }
    const int64_t end = input.sequence->kv.length() + static_cast<int64_t>(input.tokens.size());
    if (end > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("sequence length ", end, " exceeds max_position_embeddings ",
                                                     c.max_position_embeddings));
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::ValidateSpec(const SubmodelSpec& spec) const {
  if (spec.num_layers() != config().num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec: ", spec.num_layers(), " layers, the model has ", config().num_layers));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Engine::FormatChat(const std::vector<std::pair<std::string, std::string>>&) const {
  return absl::InvalidArgumentError(
      "messages: this model (matformer_ple format) has no chat template; send the prompt as text");
}

void Engine::ComputePle(const std::vector<int32_t>& tokens, float* out) {
  const ModelConfig& c = config();
  const ModelWeights& w = model_->weights();
  const int64_t d = c.hidden_size, width = static_cast<int64_t>(c.num_layers) * c.ple_dim;
  const float embed_scale = std::sqrt(static_cast<float>(d));
  const float projection_scale = 1.0f / std::sqrt(static_cast<float>(d));
  const float table_scale = std::sqrt(static_cast<float>(c.ple_dim));
  const float combine_scale = 1.0f / std::sqrt(2.0f);
  std::vector<float> embedded(d), table_row(width);
  for (size_t i = 0; i < tokens.size(); ++i) {
    float* row = out + i * width;
    if (ple_cache_->Lookup(tokens[i], row)) continue;
    w.embed.RowToF32(tokens[i], embedded.data());
    for (float& value : embedded) value *= embed_scale;
    // One row at a time, always: the result then never depends on which other
    // tokens missed in the same step, so cached and uncached runs are bitwise equal.
    MatMul(embedded.data(), 1, d, w.ple_model_projection, row, width, /*accumulate=*/false);
    w.ple_table.RowToF32(tokens[i], table_row.data());
    for (int layer = 0; layer < c.num_layers; ++layer) {
      float* slice = row + layer * c.ple_dim;
      for (int64_t j = 0; j < c.ple_dim; ++j) slice[j] *= projection_scale;
      RmsNorm(slice, w.ple_projection_norm.data(), c.ple_dim, static_cast<float>(c.rms_norm_eps), slice);
      for (int64_t j = 0; j < c.ple_dim; ++j) {
        slice[j] = (slice[j] + table_row[layer * c.ple_dim + j] * table_scale) * combine_scale;
      }
    }
    ple_cache_->Insert(tokens[i], row);
  }
}

void Engine::RunLayer(int layer, absl::Span<const StepInput> inputs, const std::vector<int64_t>& row_begin) {
  const ModelConfig& c = config();
  const LayerWeights& w = model_->weights().layers[layer];
  Scratch& s = *scratch_;
  const int64_t d = c.hidden_size, ff = c.intermediate_size;
  const int hd = c.head_dim;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * hd, kv_dim = static_cast<int64_t>(c.num_kv_heads) * hd;
  const float eps = static_cast<float>(c.rms_norm_eps);

  // Rows of the sequences that run this layer, widest FFN first, so that each
  // FFN slab covers a prefix of the gathered rows. A sequence's rows stay contiguous.
  std::vector<size_t> order;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].sequence->spec.skipped(layer)) order.push_back(i);
  }
  if (order.empty()) return;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return inputs[a].sequence->spec.ffn_width(layer) > inputs[b].sequence->spec.ffn_width(layer);
  });
  s.gather.clear();
  s.row_width.clear();
  std::vector<int64_t> gathered_begin(inputs.size());
  for (size_t i : order) {
    gathered_begin[i] = static_cast<int64_t>(s.gather.size());
    for (size_t t = 0; t < inputs[i].tokens.size(); ++t) {
      s.gather.push_back(row_begin[i] + static_cast<int64_t>(t));
      s.row_width.push_back(inputs[i].sequence->spec.ffn_width(layer));
    }
  }
  const int64_t rows = static_cast<int64_t>(s.gather.size());
  float* hidden = s.hidden.data();
  float* normed = Scratch::Sized(s.normed, rows * d);
  float* delta = Scratch::Sized(s.delta, rows * d);
  // Row-wise work between the matmuls runs on every thread once there are a
  // few rows: on one, the other threads wait at the next matmul (a 16-row
  // decode step spent ~10% of its time there).
  const bool parallel_rows = rows >= 4;
  auto normalize_rows = [&](const std::vector<float>& weight) {
#pragma omp parallel for if (parallel_rows)
    for (int64_t r = 0; r < rows; ++r) RmsNorm(hidden + s.gather[r] * d, weight.data(), d, eps, normed + r * d);
  };
  auto add_to_residual = [&]() {
#pragma omp parallel for if (parallel_rows)
    for (int64_t r = 0; r < rows; ++r) {
      float* h = hidden + s.gather[r] * d;
      const float* add = delta + r * d;
      for (int64_t j = 0; j < d; ++j) h[j] += add[j];
    }
  };

  // Attention.
  StageClock clock(profile_);
  normalize_rows(w.input_norm);
  clock.Mark(Stage::kNorm);
  float* q = Scratch::Sized(s.q, rows * q_dim);
  float* k = Scratch::Sized(s.k, rows * kv_dim);
  float* v = Scratch::Sized(s.v, rows * kv_dim);
  MatMul(normed, rows, d, w.q, q, q_dim, false);
  MatMul(normed, rows, d, w.k, k, kv_dim, false);
  MatMul(normed, rows, d, w.v, v, kv_dim, false);
  clock.Mark(Stage::kQkvProjection);
  KvPool& pool = *kv_pool_;
#pragma omp parallel for if (parallel_rows)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = s.gather[r], position = s.row_position[row];
    const float* cos = s.rope_cos.data() + row * (hd / 2);
    const float* sin = s.rope_sin.data() + row * (hd / 2);
    ApplyRope(q + r * q_dim, c.num_heads, hd, cos, sin);
    ApplyRope(k + r * kv_dim, c.num_kv_heads, hd, cos, sin);
    KvSequence& kv = inputs[s.row_input[row]].sequence->kv;
    for (int g = 0; g < c.num_kv_heads; ++g) {
      pool.Write(kv.BlockOf(position), layer, g, kv.SlotOf(position), k + r * kv_dim + g * hd, v + r * kv_dim + g * hd);
    }
  }
  clock.Mark(Stage::kRopeAndKvWrite);
  float* attention = Scratch::Sized(s.attention, rows * q_dim);
  std::vector<AttentionSegment> segments;
  for (size_t i : order) {
    segments.push_back({.kv = &inputs[i].sequence->kv,
                        .pool_layer = layer,
                        .first_row = gathered_begin[i],
                        .first_position = inputs[i].sequence->kv.length(),
                        .tokens = static_cast<int64_t>(inputs[i].tokens.size())});
  }
  StepAttention(segments, c.num_kv_heads, c.num_heads / c.num_kv_heads, q, attention,
                1.0f / std::sqrt(static_cast<float>(hd)), /*window=*/0);
  clock.Mark(Stage::kAttention);
  MatMul(attention, rows, q_dim, w.o, delta, d, false);
  clock.Mark(Stage::kOutputProjection);
  add_to_residual();

  // Nested FFN: slab j runs on the rows whose width reaches granularities[j].
  normalize_rows(w.post_attention_norm);
  clock.Mark(Stage::kNorm);
  float* gate = Scratch::Sized(s.gate, rows * ff);
  float* up = Scratch::Sized(s.up, rows * ff);
  std::vector<int64_t> slab_rows(c.granularities.size());
  for (size_t j = 0; j < c.granularities.size(); ++j) {
    slab_rows[j] = std::count_if(s.row_width.begin(), s.row_width.end(),
                                 [&](int64_t width) { return width >= c.granularities[j]; });
  }
  MatMulNestedRowSlabs(normed, d, slab_rows, w.gate, gate, ff);
  MatMulNestedRowSlabs(normed, d, slab_rows, w.up, up, ff);
  clock.Mark(Stage::kFfnGateUp);
#pragma omp parallel for if (parallel_rows)
  for (int64_t r = 0; r < rows; ++r) {
    float* g = gate + r * ff;
    const float* u = up + r * ff;
    ActivateAndMultiply(c.activation, g, u, s.row_width[r]);
  }
  clock.Mark(Stage::kFfnActivation);
  int64_t slab_begin = 0;
  for (size_t j = 0; j < c.granularities.size() && slab_rows[j] > 0; ++j) {
    MatMul(gate + slab_begin, slab_rows[j], ff, w.down[j], delta, d, /*accumulate=*/j > 0);
    slab_begin = c.granularities[j];
  }
  clock.Mark(Stage::kFfnDown);
  add_to_residual();
  clock.Mark(Stage::kNorm);

  // Per-layer input: gate the token's PLE vector by the residual, project back.
  const int64_t ple_width = static_cast<int64_t>(c.num_layers) * c.ple_dim;
  for (int64_t r = 0; r < rows; ++r) std::copy_n(hidden + s.gather[r] * d, d, normed + r * d);
  float* ple_gate = Scratch::Sized(s.ple_gate, rows * c.ple_dim);
  MatMul(normed, rows, d, w.ple_gate, ple_gate, c.ple_dim, false);
#pragma omp parallel for if (parallel_rows)
  for (int64_t r = 0; r < rows; ++r) {
    float* gated = ple_gate + r * c.ple_dim;
    ActivateAndMultiply(c.activation, gated, s.ple.data() + s.gather[r] * ple_width + layer * c.ple_dim, c.ple_dim);
  }
  MatMul(ple_gate, rows, c.ple_dim, w.ple_projection, delta, d, false);
#pragma omp parallel for if (parallel_rows)
  for (int64_t r = 0; r < rows; ++r) RmsNorm(delta + r * d, w.post_ple_norm.data(), d, eps, delta + r * d);
  clock.Mark(Stage::kPerLayerInput);
  add_to_residual();
  clock.Mark(Stage::kNorm);
}

absl::StatusOr<std::vector<float>> Engine::Step(absl::Span<const StepInput> inputs) {
  MF_RETURN_IF_ERROR(Validate(inputs));
  for (const StepInput& input : inputs) {
    MF_RETURN_IF_ERROR(
        input.sequence->kv.Reserve(input.sequence->kv.length() + static_cast<int64_t>(input.tokens.size())));
  }
  const ModelConfig& c = config();
  const ModelWeights& w = model_->weights();
  const int64_t d = c.hidden_size;
  Scratch& s = *scratch_;
  StageClock clock(profile_);

  std::vector<int64_t> row_begin(inputs.size());
  std::vector<int32_t> tokens;
  s.row_input.clear();
  s.row_position.clear();
  for (size_t i = 0; i < inputs.size(); ++i) {
    row_begin[i] = static_cast<int64_t>(tokens.size());
    tokens.insert(tokens.end(), inputs[i].tokens.begin(), inputs[i].tokens.end());
    for (size_t t = 0; t < inputs[i].tokens.size(); ++t) {
      s.row_input.push_back(i);
      s.row_position.push_back(inputs[i].sequence->kv.length() + static_cast<int64_t>(t));
    }
  }
  const int64_t total = static_cast<int64_t>(tokens.size());
  const int half = c.head_dim / 2;
  float* rope_cos = Scratch::Sized(s.rope_cos, total * half);
  float* rope_sin = Scratch::Sized(s.rope_sin, total * half);
  for (int64_t r = 0; r < total; ++r) {
    RopeAngles(s.row_position[r], rope_inv_freq_.data(), half, rope_cos + r * half, rope_sin + r * half);
  }
  float* hidden = Scratch::Sized(s.hidden, total * d);
  const float embed_scale = std::sqrt(static_cast<float>(d));
  for (int64_t r = 0; r < total; ++r) {
    w.embed.RowToF32(tokens[r], hidden + r * d);
    for (int64_t j = 0; j < d; ++j) hidden[r * d + j] *= embed_scale;
  }
  ComputePle(tokens, Scratch::Sized(s.ple, total * c.num_layers * c.ple_dim));
  clock.Mark(Stage::kEmbedding);

  for (int layer = 0; layer < c.num_layers; ++layer) RunLayer(layer, inputs, row_begin);
  clock = StageClock(profile_);
  for (const StepInput& input : inputs) {
    input.sequence->kv.set_length(input.sequence->kv.length() + static_cast<int64_t>(input.tokens.size()));
  }

  std::vector<int64_t> logit_rows;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const int64_t count = static_cast<int64_t>(inputs[i].tokens.size());
    for (int64_t t = inputs[i].all_logits ? 0 : count - 1; t < count; ++t) logit_rows.push_back(row_begin[i] + t);
  }
  const int64_t rows = static_cast<int64_t>(logit_rows.size());
  float* normed = Scratch::Sized(s.normed, rows * d);
  for (int64_t r = 0; r < rows; ++r) {
    RmsNorm(hidden + logit_rows[r] * d, w.final_norm.data(), d, static_cast<float>(c.rms_norm_eps), normed + r * d);
  }
  std::vector<float> logits(rows * c.vocab_size);
  MatMul(normed, rows, d, w.lm_head, logits.data(), c.vocab_size, false);
  clock.Mark(Stage::kLmHead);
  if (profile_ != nullptr) ++profile_->steps;
  return logits;
}

}  // namespace matformer
