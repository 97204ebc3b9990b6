#include "core/gemma3n/model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/kernels/attention.h"
#include "core/kernels/matmul.h"
#include "core/kernels/ops.h"
#include "core/util/status_macros.h"

// The forward pass of Hugging Face's Gemma3nForCausalLM (modeling_gemma3n.py)
// with a KV cache, in f32. Comments name the HF module each step follows.
namespace matformer::gemma3n {
namespace {

// HF's AltUp magnitude matching clamps the mean square of the projected
// stream at this value before the square root.
constexpr float kMagnitudeEpsilon = 1e-5f;

double MeanSquare(const float* x, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  return sum / n;
}

// RMSNorm without a scale (HF's v_norm: with_scale=False).
void RmsNormNoScale(float* x, int64_t n, float eps) {
  const float scale = static_cast<float>(1.0 / std::sqrt(MeanSquare(x, n) + eps));
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

// Scales `x` to the root-mean-square magnitude `target` (Gemma3nTextModel's
// AltUp stream expansion and final averaging).
void MatchMagnitude(float* x, int64_t n, float target) {
  const float magnitude = std::sqrt(std::max(static_cast<float>(MeanSquare(x, n)), kMagnitudeEpsilon));
  const float scale = target / magnitude;
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

// Gemma3nTextAltUp.compute_router_modalities: tanh(W_router · (RMSNorm(x) / d)).
void RouterModalities(const LayerWeights& w, const float* x, int64_t d, int n, float eps, float* scratch,
                      float* modalities) {
  RmsNorm(x, w.router_norm.data(), d, eps, scratch);
  const float input_scale = 1.0f / static_cast<float>(d);
  for (int64_t k = 0; k < d; ++k) scratch[k] *= input_scale;
  for (int i = 0; i < n; ++i) {
    const float* row = w.modality_router.data() + i * d;
    double sum = 0;
    for (int64_t k = 0; k < d; ++k) sum += static_cast<double>(row[k]) * scratch[k];
    modalities[i] = std::tanh(static_cast<float>(sum));
  }
}

// Gemma3nTextMLP._gaussian_topk: keeps what exceeds mean + z * std (biased
// std, over the row's m gate values) and shifts it down by that cutoff.
void GaussianTopK(float* gate, int64_t m, float z) {
  double sum = 0;
  for (int64_t i = 0; i < m; ++i) sum += gate[i];
  const double mean = sum / m;
  double squares = 0;
  for (int64_t i = 0; i < m; ++i) squares += (gate[i] - mean) * (gate[i] - mean);
  const float cutoff = static_cast<float>(mean + std::sqrt(squares / m) * z);
  for (int64_t i = 0; i < m; ++i) gate[i] = std::max(gate[i] - cutoff, 0.0f);
}

std::vector<float> InverseFrequencies(double theta, int head_dim) {
  std::vector<float> inv_freq(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) inv_freq[i] = static_cast<float>(std::pow(theta, -2.0 * i / head_dim));
  return inv_freq;
}


// The activations of the rows that run one layer in a step. Every buffer is
// row-major [rows][width] with room for `capacity` rows; the AltUp streams and
// predictions are N such [rows][d] blocks (compact for the current rows).
struct Activations {
  Activations(const Config& c, int64_t capacity, int64_t max_ffn)
      : d(c.hidden_size),
        streams(c.altup_num_inputs * capacity * d),
        predictions(streams.size()),
        ple(capacity * c.hidden_size_per_layer_input),
        modalities(capacity * c.altup_num_inputs),
        coefs(c.altup_num_inputs * c.altup_num_inputs),
        router(d),
        normed(capacity * d),
        attn_laurel(capacity * d),
        laurel_rank(capacity * c.laurel_rank),
        laurel(capacity * d),
        q(capacity * c.num_heads * c.head_dim),
        k(capacity * c.num_kv_heads * c.head_dim),
        v(k.size()),
        attn(q.size()),
        attn_out(capacity * d),
        gate(capacity * max_ffn),
        up(gate.size()),
        ffn_out(capacity * d),
        per_layer(capacity * c.hidden_size_per_layer_input),
        per_layer_out(capacity * d) {}

  float* stream(int i, int64_t t) { return &streams[(i * T + t) * d]; }
  float* prediction(int i, int64_t t) { return &predictions[(i * T + t) * d]; }

  int64_t T = 0;  // rows running the layer
  const int64_t d;
  std::vector<float> streams, predictions;  // AltUp state and its prediction, [N][T][d]
  std::vector<float> ple;                   // the layer's per-layer input, [T][d_ple]
  std::vector<float> modalities, coefs, router;  // AltUp router outputs, coefficients, scratch
  std::vector<float> normed;       // input of the block being run (input norm, then pre-FFN norm)
  std::vector<float> attn_laurel;  // (prediction + attention + LAuReL) / sqrt(2)
  std::vector<float> laurel_rank, laurel;
  std::vector<float> q, k, v, attn, attn_out;
  std::vector<float> gate, up, ffn_out;  // ffn_out ends as the layer's output for the active stream
  std::vector<float> per_layer, per_layer_out;
};

// The rows of one sequence within a layer's batch.
struct Segment {
  int64_t begin = 0, count = 0;  // rows [begin, begin + count)
  int64_t start = 0;             // position of the first row
  KvCache* cache = nullptr;
  int source = 0;                // the layer whose K/V the sequence reads here
  int source_pool_layer = 0;     // where the source's K/V live in the KV pool
};

// Gemma3nTextScaledWordEmbedding: E[t] * sqrt(d).
void Embed(const Config& c, const Weights& w, absl::Span<const int32_t> tokens, float* h0) {
  const float scale = std::sqrt(static_cast<float>(c.hidden_size));
  for (size_t t = 0; t < tokens.size(); ++t) {
    float* row = h0 + t * c.hidden_size;
    w.embed.RowToF32(tokens[t], row);
    for (int64_t k = 0; k < c.hidden_size; ++k) row[k] *= scale;
  }
}

// Gemma3nTextModel.project_per_layer_inputs, for every layer:
//   ple[t, l] = (RMSNorm(W_plmp · h0 · d^-0.5)[l] + E_ple[t, l] · sqrt(d_ple)) · 2^-0.5
// Tokens found in `cache` are not recomputed; computed ones are inserted.
void PerLayerInputs(const Config& c, const Weights& w, absl::Span<const int32_t> tokens, const float* h0,
                    PleCache* cache, float* ple) {
  const int64_t d = c.hidden_size, dp = c.hidden_size_per_layer_input, L = c.num_layers;
  std::vector<int64_t> misses;
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (cache == nullptr || !cache->Lookup(tokens[t], &ple[t * L * dp])) misses.push_back(t);
  }
  if (misses.empty()) return;
  const int64_t M = static_cast<int64_t>(misses.size());
  std::vector<float> h0_misses(M * d), projected(M * L * dp), table_row(L * dp);
  for (int64_t i = 0; i < M; ++i) std::copy_n(&h0[misses[i] * d], d, &h0_misses[i * d]);
  MatMul(h0_misses.data(), M, d, w.per_layer_model_projection, projected.data(), L * dp, /*accumulate=*/false);
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float projection_scale = 1.0f / std::sqrt(static_cast<float>(d));
  const float table_scale = std::sqrt(static_cast<float>(dp));
  const float combine_scale = 1.0f / std::sqrt(2.0f);
  for (int64_t i = 0; i < M; ++i) {
    const int64_t t = misses[i];
    // Multimodal soft-token ids have no PLE row; HF's Gemma3nModel reads row 0 for them.
    const int64_t ple_token = tokens[t] < c.vocab_size_per_layer_input ? tokens[t] : 0;
    w.per_layer_embed.RowToF32(ple_token, table_row.data());
    for (int64_t l = 0; l < L; ++l) {
      float* chunk = &projected[(i * L + l) * dp];
      for (int64_t k = 0; k < dp; ++k) chunk[k] *= projection_scale;
      RmsNorm(chunk, w.per_layer_projection_norm.data(), dp, eps, chunk);
      const float* table = &table_row[l * dp];
      float* out = &ple[(t * L + l) * dp];
      for (int64_t k = 0; k < dp; ++k) out[k] = (chunk[k] + table[k] * table_scale) * combine_scale;
    }
    if (cache != nullptr) cache->Insert(tokens[t], &ple[t * L * dp]);
  }
}

// Gemma3nTextModel.forward, before the layers: stream 0 is h0, stream i the
// i-th AltUp projection of h0 scaled to h0's magnitude. state is [N][R][d].
void InitStreams(const Config& c, const Weights& w, const float* h0, int64_t R, float* state) {
  const int64_t d = c.hidden_size;
  std::copy(h0, h0 + R * d, state);
  for (int i = 1; i < c.altup_num_inputs; ++i) {
    float* stream = state + i * R * d;
    MatMul(h0, R, d, w.altup_projections[i - 1], stream, d, false);
    for (int64_t r = 0; r < R; ++r) {
      MatchMagnitude(stream + r * d, d, static_cast<float>(std::sqrt(MeanSquare(h0 + r * d, d))));
    }
  }
}

// Gemma3nTextAltUp.predict: pred_i = s_i + sum_j C[i][j] s_j with
// C = reshape(W_pred · modalities(s_active), [N, N]).
void AltUpPredict(const Config& c, const LayerWeights& lw, Activations& a) {
  const int N = c.altup_num_inputs;
  const float eps = static_cast<float>(c.rms_norm_eps);
  for (int64_t t = 0; t < a.T; ++t) {
    float* modalities = &a.modalities[t * N];
    RouterModalities(lw, a.stream(c.altup_active_idx, t), a.d, N, eps, a.router.data(), modalities);
    for (int ij = 0; ij < N * N; ++ij) {
      double sum = 0;
      for (int m = 0; m < N; ++m) sum += static_cast<double>(lw.prediction_coefs[ij * N + m]) * modalities[m];
      a.coefs[ij] = static_cast<float>(sum);
    }
    for (int i = 0; i < N; ++i) {
      float* out = a.prediction(i, t);
      const float* own = a.stream(i, t);
      for (int64_t k = 0; k < a.d; ++k) {
        float sum = own[k];
        for (int j = 0; j < N; ++j) sum += a.coefs[i * N + j] * a.stream(j, t)[k];
        out[k] = sum;
      }
    }
  }
}

// Gemma3nTextLaurelBlock on a.normed: x + RMSNorm(right(left(x))) into a.laurel.
void Laurel(const Config& c, const LayerWeights& lw, Activations& a) {
  const int64_t T = a.T, d = a.d;
  MatMul(a.normed.data(), T, d, lw.laurel_left, a.laurel_rank.data(), c.laurel_rank, false);
  MatMul(a.laurel_rank.data(), T, c.laurel_rank, lw.laurel_right, a.laurel.data(), d, false);
  for (int64_t t = 0; t < T; ++t) {
    float* row = &a.laurel[t * d];
    RmsNorm(row, lw.post_laurel_norm.data(), d, static_cast<float>(c.rms_norm_eps), row);
    for (int64_t k = 0; k < d; ++k) row[k] += a.normed[t * d + k];
  }
}

// Gemma3nTextAttention on a.normed, into a.attn_out (before the post norm):
// q/k RMSNorm per head then RoPE, v RMSNorm without scale, scale 1. Each
// segment (one sequence's rows) that owns its K/V here appends them to its
// cache; a KV-shared one reads its source's, already appended this step.
// Sliding layers see keys j with position - j < sliding_window.
void Attention(const Config& c, const LayerWeights& lw, int layer, const float* inv_freq,
               const std::vector<Segment>& segments, Activations& a) {
  const int64_t T = a.T, d = a.d;
  const int hd = c.head_dim, H = c.num_heads, KV = c.num_kv_heads;
  const int64_t q_dim = int64_t{H} * hd, kv_dim = int64_t{KV} * hd;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const bool owns_kv = std::any_of(segments.begin(), segments.end(), [&](const Segment& s) { return s.source == layer; });
  MatMul(a.normed.data(), T, d, lw.q, a.q.data(), q_dim, false);
  if (owns_kv) {
    MatMul(a.normed.data(), T, d, lw.k, a.k.data(), kv_dim, false);
    MatMul(a.normed.data(), T, d, lw.v, a.v.data(), kv_dim, false);
  }
  const bool sliding = c.layer_types[layer] == LayerType::kSliding;
  const int group = H / KV;
  std::vector<float> rope_cos(hd / 2), rope_sin(hd / 2);  // one position's angles, for its q and k
  for (const Segment& segment : segments) {
    for (int64_t i = 0; i < segment.count; ++i) {
      const int64_t t = segment.begin + i, position = segment.start + i;
      RopeAngles(position, inv_freq, hd / 2, rope_cos.data(), rope_sin.data());
      for (int h = 0; h < H; ++h) {
        float* head = &a.q[t * q_dim + h * hd];
        RmsNorm(head, lw.q_norm.data(), hd, eps, head);
      }
      ApplyRope(&a.q[t * q_dim], H, hd, rope_cos.data(), rope_sin.data());
      if (segment.source != layer) continue;
      for (int h = 0; h < KV; ++h) {
        float* key = &a.k[t * kv_dim + h * hd];
        RmsNorm(key, lw.k_norm.data(), hd, eps, key);
        RmsNormNoScale(&a.v[t * kv_dim + h * hd], hd, eps);
      }
      ApplyRope(&a.k[t * kv_dim], KV, hd, rope_cos.data(), rope_sin.data());
    }
    KvSequence& kv = segment.cache->kv();
    KvPool& pool = kv.pool();
    if (segment.source == layer) {
      for (int64_t i = 0; i < segment.count; ++i) {
        const int64_t t = segment.begin + i, position = segment.start + i;
        for (int h = 0; h < KV; ++h) {
          pool.Write(kv.BlockOf(position), segment.source_pool_layer, h, kv.SlotOf(position), &a.k[t * kv_dim + h * hd],
                     &a.v[t * kv_dim + h * hd]);
        }
      }
    }
  }
  std::vector<AttentionSegment> attention_segments;
  for (const Segment& segment : segments) {
    attention_segments.push_back({.kv = &segment.cache->kv(),
                                  .pool_layer = segment.source_pool_layer,
                                  .first_row = segment.begin,
                                  .first_position = segment.start,
                                  .tokens = segment.count});
  }
  StepAttention(attention_segments, KV, group, a.q.data(), a.attn.data(), /*scale=*/1.0f,
                sliding ? c.sliding_window : 0);
  MatMul(a.attn.data(), T, q_dim, lw.o, a.attn_out.data(), d, false);
}

// Gemma3nTextMLP on a.normed into a.ffn_out, row t at width row_width[t]
// (a slab end; rows sorted widest first): down(gelu(topk(gate(x))) * up(x)),
// topk the Gaussian cutoff when `sparse`. Slab j runs over the rows whose
// width reaches its end, a prefix of them.
void FeedForward(const Config& c, const LayerWeights& lw, const std::vector<int64_t>& row_width, bool sparse, float z,
                 Activations& a) {
  const int64_t T = a.T, d = a.d, ld = row_width[0];
  std::vector<int64_t> slab_rows;  // rows that run each slab
  for (int64_t end : lw.ffn_slab_ends) {
    const int64_t rows = std::count_if(row_width.begin(), row_width.end(), [&](int64_t w) { return w >= end; });
    if (rows == 0) break;
    slab_rows.push_back(rows);
  }
  MatMulNestedRowSlabs(a.normed.data(), d, slab_rows, lw.gate, a.gate.data(), ld);
  MatMulNestedRowSlabs(a.normed.data(), d, slab_rows, lw.up, a.up.data(), ld);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t m = row_width[t];
    float* g = &a.gate[t * ld];
    if (sparse) GaussianTopK(g, m, z);
    ActivateAndMultiply(c.activation, g, &a.up[t * ld], m);
  }
  int64_t begin = 0;
  for (size_t j = 0; j < slab_rows.size(); ++j) {
    MatMul(a.gate.data() + begin, slab_rows[j], ld, lw.down[j], a.ffn_out.data(), d, /*accumulate=*/j > 0);
    begin = lw.ffn_slab_ends[j];
  }
}

// Gemma3nTextAltUp.correct with the layer output `out` (a.ffn_out):
// s_i = pred_i + (out - pred_active) * (W_corr · modalities(out) + 1)_i.
void AltUpCorrect(const Config& c, const LayerWeights& lw, Activations& a) {
  const int N = c.altup_num_inputs;
  for (int64_t t = 0; t < a.T; ++t) {
    const float* out = &a.ffn_out[t * a.d];
    const float* active_prediction = a.prediction(c.altup_active_idx, t);
    float* modalities = &a.modalities[t * N];
    RouterModalities(lw, out, a.d, N, static_cast<float>(c.rms_norm_eps), a.router.data(), modalities);
    for (int i = 0; i < N; ++i) {
      double sum = 1.0;
      for (int m = 0; m < N; ++m) sum += static_cast<double>(lw.correction_coefs[i * N + m]) * modalities[m];
      const float coef = static_cast<float>(sum);
      float* s = a.stream(i, t);
      const float* prediction = a.prediction(i, t);
      for (int64_t k = 0; k < a.d; ++k) s[k] = prediction[k] + (out[k] - active_prediction[k]) * coef;
    }
  }
}

// The end of Gemma3nTextDecoderLayer: streams 1..N-1 (HF's [1:], whatever
// altup_active_idx is) += RMSNorm(W_proj · (act(W_gate · scaled s_active) * ple)).
void InjectPerLayerInput(const Config& c, const LayerWeights& lw, Activations& a) {
  const int64_t T = a.T, d = a.d, dp = c.hidden_size_per_layer_input;
  float* scaled = a.normed.data();  // free at this point
  for (int64_t t = 0; t < T; ++t) {
    const float* corrected = a.stream(c.altup_active_idx, t);
    for (int64_t k = 0; k < d; ++k) {
      scaled[t * d + k] = c.altup_correct_scale ? corrected[k] * lw.correct_output_scale[k] : corrected[k];
    }
  }
  MatMul(scaled, T, d, lw.per_layer_input_gate, a.per_layer.data(), dp, false);
  for (int64_t t = 0; t < T; ++t) {
    float* row = &a.per_layer[t * dp];
    ActivateAndMultiply(c.activation, row, &a.ple[t * dp], dp);
  }
  MatMul(a.per_layer.data(), T, dp, lw.per_layer_projection, a.per_layer_out.data(), d, false);
  for (int64_t t = 0; t < T; ++t) {
    float* row = &a.per_layer_out[t * d];
    RmsNorm(row, lw.post_per_layer_input_norm.data(), d, static_cast<float>(c.rms_norm_eps), row);
    for (int i = 1; i < c.altup_num_inputs; ++i) {
      float* s = a.stream(i, t);
      for (int64_t k = 0; k < d; ++k) s[k] += row[k];
    }
  }
}

// Gemma3nTextDecoderLayer.forward over the rows in `a`.
void DecoderLayer(const Config& c, const LayerWeights& lw, int layer, const float* inv_freq,
                  const std::vector<Segment>& segments, const std::vector<int64_t>& row_width, float sparsity_z,
                  Activations& a) {
  const int64_t T = a.T, d = a.d;
  const float eps = static_cast<float>(c.rms_norm_eps);
  AltUpPredict(c, lw, a);
  for (int64_t t = 0; t < T; ++t) {
    RmsNorm(a.prediction(c.altup_active_idx, t), lw.input_norm.data(), d, eps, &a.normed[t * d]);
  }
  Laurel(c, lw, a);
  Attention(c, lw, layer, inv_freq, segments, a);
  for (int64_t t = 0; t < T; ++t) {
    float* attn = &a.attn_out[t * d];
    RmsNorm(attn, lw.post_attention_norm.data(), d, eps, attn);
    const float* prediction = a.prediction(c.altup_active_idx, t);
    float* combined = &a.attn_laurel[t * d];
    for (int64_t k = 0; k < d; ++k) {
      combined[k] = (prediction[k] + attn[k] + a.laurel[t * d + k]) * static_cast<float>(M_SQRT1_2);
    }
    RmsNorm(combined, lw.pre_ffw_norm.data(), d, eps, &a.normed[t * d]);
  }
  FeedForward(c, lw, row_width, c.activation_sparsity[layer] > 0, sparsity_z, a);
  for (int64_t t = 0; t < T; ++t) {
    float* row = &a.ffn_out[t * d];
    RmsNorm(row, lw.post_ffw_norm.data(), d, eps, row);
    for (int64_t k = 0; k < d; ++k) row[k] += a.attn_laurel[t * d + k];
  }
  AltUpCorrect(c, lw, a);
  InjectPerLayerInput(c, lw, a);
}

// Gemma3nTextModel.forward after the layers and Gemma3nForCausalLM's head for
// rows `rows` of state [N][R][d]: unembed streams 1..N-1 to stream 0's
// magnitude, average the N streams, final norm, tied LM head, soft-cap.
std::vector<float> Logits(const Config& c, const Weights& w, const std::vector<float>& state, int64_t R,
                          const std::vector<int64_t>& rows) {
  const int64_t d = c.hidden_size, n_rows = static_cast<int64_t>(rows.size());
  const int N = c.altup_num_inputs;
  auto state_row = [&](int i, int64_t r) { return &state[(i * R + r) * d]; };
  std::vector<float> hidden(n_rows * d), gathered(n_rows * d), unembedded(n_rows * d);
  for (int64_t r = 0; r < n_rows; ++r) std::copy_n(state_row(0, rows[r]), d, &hidden[r * d]);
  for (int i = 1; i < N; ++i) {
    for (int64_t r = 0; r < n_rows; ++r) std::copy_n(state_row(i, rows[r]), d, &gathered[r * d]);
    MatMul(gathered.data(), n_rows, d, w.altup_unembed_projections[i - 1], unembedded.data(), d, false);
    for (int64_t r = 0; r < n_rows; ++r) {
      float* row = &unembedded[r * d];
      MatchMagnitude(row, d, static_cast<float>(std::sqrt(MeanSquare(state_row(0, rows[r]), d))));
      for (int64_t k = 0; k < d; ++k) hidden[r * d + k] += row[k];
    }
  }
  for (int64_t r = 0; r < n_rows; ++r) {
    float* row = &hidden[r * d];
    for (int64_t k = 0; k < d; ++k) row[k] /= static_cast<float>(N);
    RmsNorm(row, w.final_norm.data(), d, static_cast<float>(c.rms_norm_eps), row);
  }
  std::vector<float> logits(n_rows * c.vocab_size);
  MatMul(hidden.data(), n_rows, d, w.lm_head, logits.data(), c.vocab_size, false);
  if (c.final_logit_softcapping > 0) {
    const float cap = static_cast<float>(c.final_logit_softcapping);
    for (float& logit : logits) logit = std::tanh(logit / cap) * cap;
  }
  return logits;
}

}  // namespace

double NormalQuantile(double p) {
  // Bisection on the CDF: monotone, exact to double precision after ~70
  // halvings of [-40, 40]; called once per layer at load time.
  double lo = -40, hi = 40;
  for (int i = 0; i < 200 && hi - lo > 0; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return 0.5 * (lo + hi);
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& directory, const LoadOptions& options) {
  MF_RETURN_IF_ERROR(CheckCpuRunsKernels());
  std::unique_ptr<Model> model(new Model());
  model->options_ = options;
  model->directory_ = directory;
  MF_ASSIGN_OR_RETURN(model->config_, LoadConfig(directory + "/config.json"));
  MF_ASSIGN_OR_RETURN(model->checkpoint_, Checkpoint::Open(directory));
  MF_ASSIGN_OR_RETURN(model->weights_, LoadWeights(model->config_, *model->checkpoint_, options));
  if (const std::string path = directory + "/tokenizer.model"; std::filesystem::exists(path)) {
    MF_ASSIGN_OR_RETURN(model->tokenizer_, Tokenizer::Load(path, model->config_.vocab_size));
  }
  const Config& c = model->config_;
  model->inv_freq_full_ = InverseFrequencies(c.rope_theta_full, c.head_dim);
  model->inv_freq_sliding_ = InverseFrequencies(c.rope_theta_sliding, c.head_dim);
  MF_ASSIGN_OR_RETURN(const std::vector<int> sources, KvSourceLayers(c, std::vector<bool>(c.num_layers, false)));
  for (int l = 0; l < c.num_layers; ++l) {
    model->kv_pool_layer_.push_back(sources[l] == l ? model->num_kv_layers_++ : -1);
  }
  for (double sparsity : c.activation_sparsity) {
    model->sparsity_z_.push_back(sparsity > 0 ? static_cast<float>(NormalQuantile(sparsity)) : 0.0f);
  }
  return model;
}

std::unique_ptr<KvPool> Model::NewKvPool(int64_t num_blocks, int block_tokens, KvDtype dtype) const {
  return std::make_unique<KvPool>(num_kv_layers_, config_.num_kv_heads, config_.head_dim, block_tokens, num_blocks,
                                  dtype);
}

absl::StatusOr<Slice> Model::MakeSlice(const std::vector<int64_t>& widths_of_kept_layers,
                                       const std::vector<int>& skipped_layers, std::string name) const {
  return Slice::Create(config_, options_.ffn_granule, widths_of_kept_layers, skipped_layers, std::move(name));
}

absl::StatusOr<std::vector<float>> Model::Forward(const Slice& slice, absl::Span<const int32_t> tokens,
                                                  KvCache& cache, const ForwardOptions& options) const {
  const StepInput input{.slice = &slice, .cache = &cache, .tokens = tokens, .all_logits = options.all_logits};
  return Step({&input, 1}, {.ple_cache = options.ple_cache, .observer = options.observer});
}

absl::Status Model::CheckInput(const StepInput& input) const {
  const Config& c = config_;
  const int L = c.num_layers;
  if (input.slice == nullptr || input.cache == nullptr) return absl::InvalidArgumentError("Step: no slice or cache");
  const Slice& slice = *input.slice;
  const KvCache& cache = *input.cache;
  const KvPool& pool = cache.kv().pool();
  if (pool.num_layers() != num_kv_layers_ || pool.num_kv_heads() != c.num_kv_heads ||
      pool.head_dim() != c.head_dim) {
    return absl::InvalidArgumentError("Step: the KV cache's pool was not made by this model's NewKvPool");
  }
  const int64_t T = static_cast<int64_t>(input.tokens.size());
  if (T == 0) return absl::InvalidArgumentError("Step: no tokens");
  if (static_cast<int>(slice.ffn_width.size()) != L || static_cast<int>(slice.skipped.size()) != L ||
      static_cast<int>(slice.kv_source.size()) != L) {
    return absl::InvalidArgumentError(absl::StrCat("Step: slice '", slice.name, "' is not for a ", L, "-layer model"));
  }
  for (int32_t token : input.tokens) {
    if (token < 0 || token >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("Step: token ", token, " outside [0, ", c.vocab_size, ")"));
    }
  }
  if (cache.length() + T > c.max_position_embeddings) {
    return absl::OutOfRangeError(absl::StrCat("Step: ", cache.length() + T, " positions exceed max_position_embeddings ",
                                              c.max_position_embeddings));
  }
  // A slice made for another config could name K/V sources this model's
  // weights do not have (no k/v projections in shared layers).
  absl::StatusOr<std::vector<int>> sources = KvSourceLayers(c, slice.skipped);
  if (!sources.ok() || *sources != slice.kv_source) {
    return absl::InvalidArgumentError(absl::StrCat("Step: slice '", slice.name, "' was not made for this model"));
  }
  for (int l = 0; l < L; ++l) {
    if (slice.skipped[l]) continue;
    const std::vector<int64_t>& ends = weights_.layers[l].ffn_slab_ends;
    if (std::find(ends.begin(), ends.end(), slice.ffn_width[l]) == ends.end()) {
      return absl::InvalidArgumentError(absl::StrCat("Step: slice '", slice.name, "' layer ", l, " width ",
                                                     slice.ffn_width[l], " is not a slab boundary of this model"));
    }
  }
  if (!(cache.length() == 0 && cache.kv_source.empty()) && cache.kv_source != slice.kv_source) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Step: slice '", slice.name, "' skips other layers than the slice that filled this KV cache"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Model::Step(absl::Span<const StepInput> inputs, const StepOptions& options) const {
  const Config& c = config_;
  const int L = c.num_layers, N = c.altup_num_inputs;
  const int64_t d = c.hidden_size, dp = c.hidden_size_per_layer_input;

  // Every input is checked before anything changes.
  if (inputs.empty()) return absl::InvalidArgumentError("Step: no inputs");
  for (size_t s = 0; s < inputs.size(); ++s) {
    MF_RETURN_IF_ERROR(CheckInput(inputs[s]));
    for (size_t other = 0; other < s; ++other) {
      if (inputs[other].cache == inputs[s].cache) return absl::InvalidArgumentError("Step: a KV cache appears twice");
    }
  }
  if (options.ple_cache != nullptr && options.ple_cache->floats_per_token() != L * dp) {
    return absl::InvalidArgumentError(absl::StrCat("Step: the PLE cache holds ", options.ple_cache->floats_per_token(),
                                                   " floats per token, this model needs ", L * dp));
  }

  // K/V room for every input's new positions; a failure leaves only unused
  // capacity behind.
  for (const StepInput& input : inputs) {
    MF_RETURN_IF_ERROR(input.cache->kv().Reserve(input.cache->length() + static_cast<int64_t>(input.tokens.size())));
  }

  // Rows: the tokens of every input, in input order.
  std::vector<int64_t> row_begin;
  std::vector<int32_t> tokens;
  int64_t max_ffn = 1;
  for (const StepInput& input : inputs) {
    row_begin.push_back(static_cast<int64_t>(tokens.size()));
    tokens.insert(tokens.end(), input.tokens.begin(), input.tokens.end());
    for (int64_t width : input.slice->ffn_width) max_ffn = std::max(max_ffn, width);
    KvCache& cache = *input.cache;
    if (cache.length() == 0 && cache.kv_source.empty()) cache.kv_source = input.slice->kv_source;
  }
  const int64_t R = static_cast<int64_t>(tokens.size());

  std::vector<float> h0(R * d), ple(R * L * dp), state(N * R * d);
  Embed(c, weights_, tokens, h0.data());
  PerLayerInputs(c, weights_, tokens, h0.data(), options.ple_cache, ple.data());
  InitStreams(c, weights_, h0.data(), R, state.data());
  if (options.observer != nullptr) (*options.observer)(-1, state);

  Activations a(c, R, max_ffn);
  for (int l = 0; l < L; ++l) {
    // The sequences that keep the layer, widest FFN first; their rows form the batch.
    std::vector<size_t> order;
    for (size_t s = 0; s < inputs.size(); ++s) {
      if (!inputs[s].slice->skipped[l]) order.push_back(s);
    }
    std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
      return inputs[x].slice->ffn_width[l] > inputs[y].slice->ffn_width[l];
    });
    std::vector<int64_t> rows, row_width;
    std::vector<Segment> segments;
    for (size_t s : order) {
      const StepInput& input = inputs[s];
      const int64_t count = static_cast<int64_t>(input.tokens.size());
      const int source = input.slice->kv_source[l];
      segments.push_back({.begin = static_cast<int64_t>(rows.size()),
                          .count = count,
                          .start = input.cache->length(),
                          .cache = input.cache,
                          .source = source,
                          .source_pool_layer = kv_pool_layer_[source]});
      for (int64_t i = 0; i < count; ++i) {
        rows.push_back(row_begin[s] + i);
        row_width.push_back(input.slice->ffn_width[l]);
      }
    }
    if (!rows.empty()) {
      a.T = static_cast<int64_t>(rows.size());
      for (int64_t t = 0; t < a.T; ++t) {
        for (int i = 0; i < N; ++i) std::copy_n(&state[(i * R + rows[t]) * d], d, a.stream(i, t));
        std::copy_n(&ple[(rows[t] * L + l) * dp], dp, &a.ple[t * dp]);
      }
      const float* inv_freq = c.layer_types[l] == LayerType::kSliding ? inv_freq_sliding_.data() : inv_freq_full_.data();
      DecoderLayer(c, weights_.layers[l], l, inv_freq, segments, row_width, sparsity_z_[l], a);
      for (int64_t t = 0; t < a.T; ++t) {
        for (int i = 0; i < N; ++i) std::copy_n(a.stream(i, t), d, &state[(i * R + rows[t]) * d]);
      }
    }
    if (options.observer != nullptr) (*options.observer)(l, state);  // rows that skip the layer are unchanged
  }

  std::vector<int64_t> logit_rows;
  for (size_t s = 0; s < inputs.size(); ++s) {
    const int64_t count = static_cast<int64_t>(inputs[s].tokens.size());
    for (int64_t i = inputs[s].all_logits ? 0 : count - 1; i < count; ++i) logit_rows.push_back(row_begin[s] + i);
    inputs[s].cache->kv().set_length(inputs[s].cache->length() + count);
  }
  return Logits(c, weights_, state, R, logit_rows);
}

}  // namespace matformer::gemma3n
