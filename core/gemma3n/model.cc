#include "core/gemma3n/model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
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


// The activations of one Forward call of T tokens. Every buffer is row-major
// [T][width]; the AltUp streams and predictions are N such [T][d] blocks.
struct Activations {
  Activations(const Config& c, int64_t tokens, int64_t max_ffn, int64_t context)
      : T(tokens),
        d(c.hidden_size),
        streams(c.altup_num_inputs * T * d),
        predictions(streams.size()),
        ple(T * c.num_layers * c.hidden_size_per_layer_input),
        modalities(T * c.altup_num_inputs),
        coefs(c.altup_num_inputs * c.altup_num_inputs),
        router(d),
        normed(T * d),
        attn_laurel(T * d),
        laurel_rank(T * c.laurel_rank),
        laurel(T * d),
        q(T * c.num_heads * c.head_dim),
        k(T * c.num_kv_heads * c.head_dim),
        v(k.size()),
        attn(q.size()),
        attn_out(T * d),
        gate(T * max_ffn),
        up(gate.size()),
        ffn_out(T * d),
        per_layer(T * c.hidden_size_per_layer_input),
        per_layer_out(T * d),
        scores(context) {}

  float* stream(int i, int64_t t) { return &streams[(i * T + t) * d]; }
  float* prediction(int i, int64_t t) { return &predictions[(i * T + t) * d]; }

  const int64_t T, d;
  std::vector<float> streams, predictions;  // AltUp state and its prediction, [N][T][d]
  std::vector<float> ple;                   // per-layer inputs, [T][L][d_ple]
  std::vector<float> modalities, coefs, router;  // AltUp router outputs, coefficients, scratch
  std::vector<float> normed;       // input of the block being run (input norm, then pre-FFN norm)
  std::vector<float> attn_laurel;  // (prediction + attention + LAuReL) / sqrt(2)
  std::vector<float> laurel_rank, laurel;
  std::vector<float> q, k, v, attn, attn_out;
  std::vector<float> gate, up, ffn_out;  // ffn_out ends as the layer's output for the active stream
  std::vector<float> per_layer, per_layer_out;
  std::vector<float> scores;  // attention scores of one query, [context]
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
// i-th AltUp projection of h0 scaled to h0's magnitude.
void InitStreams(const Config& c, const Weights& w, const float* h0, Activations& a) {
  const int64_t T = a.T, d = a.d;
  std::copy(h0, h0 + T * d, a.streams.begin());
  for (int i = 1; i < c.altup_num_inputs; ++i) {
    MatMul(h0, T, d, w.altup_projections[i - 1], a.stream(i, 0), d, false);
    for (int64_t t = 0; t < T; ++t) {
      MatchMagnitude(a.stream(i, t), d, static_cast<float>(std::sqrt(MeanSquare(h0 + t * d, d))));
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
// q/k RMSNorm per head then RoPE, v RMSNorm without scale, scale 1. A layer
// that owns its K/V appends them to the cache; a KV-shared layer reads its
// source's, already appended this step. Sliding layers see keys j with
// position - j < sliding_window.
void Attention(const Config& c, const LayerWeights& lw, int layer, int source, const float* inv_freq, int64_t start,
               KvCache& cache, Activations& a) {
  const int64_t T = a.T, d = a.d;
  const int hd = c.head_dim, H = c.num_heads, KV = c.num_kv_heads;
  const int64_t q_dim = int64_t{H} * hd, kv_dim = int64_t{KV} * hd;
  const float eps = static_cast<float>(c.rms_norm_eps);
  MatMul(a.normed.data(), T, d, lw.q, a.q.data(), q_dim, false);
  for (int64_t t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      float* head = &a.q[t * q_dim + h * hd];
      RmsNorm(head, lw.q_norm.data(), hd, eps, head);
    }
    ApplyRope(&a.q[t * q_dim], H, hd, start + t, inv_freq);
  }
  if (source == layer) {
    MatMul(a.normed.data(), T, d, lw.k, a.k.data(), kv_dim, false);
    MatMul(a.normed.data(), T, d, lw.v, a.v.data(), kv_dim, false);
    for (int64_t t = 0; t < T; ++t) {
      for (int h = 0; h < KV; ++h) {
        float* key = &a.k[t * kv_dim + h * hd];
        RmsNorm(key, lw.k_norm.data(), hd, eps, key);
        RmsNormNoScale(&a.v[t * kv_dim + h * hd], hd, eps);
      }
      ApplyRope(&a.k[t * kv_dim], KV, hd, start + t, inv_freq);
    }
    cache.k[layer].insert(cache.k[layer].end(), a.k.begin(), a.k.end());
    cache.v[layer].insert(cache.v[layer].end(), a.v.begin(), a.v.end());
  }
  const std::vector<float>& keys = cache.k[source];
  const std::vector<float>& values = cache.v[source];
  const bool sliding = c.layer_types[layer] == LayerType::kSliding;
  const int group = H / KV;
  float* scores = a.scores.data();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t position = start + t;
    const int64_t first = sliding ? std::max<int64_t>(0, position - c.sliding_window + 1) : 0;
    for (int h = 0; h < H; ++h) {
      const float* query = &a.q[t * q_dim + h * hd];
      const int64_t kv_offset = int64_t{h / group} * hd;
      float max_score = -INFINITY;
      for (int64_t j = first; j <= position; ++j) {
        const float* key = &keys[j * kv_dim + kv_offset];
        float dot = 0;
        for (int i = 0; i < hd; ++i) dot += query[i] * key[i];
        scores[j] = dot;
        max_score = std::max(max_score, dot);
      }
      double total = 0;
      for (int64_t j = first; j <= position; ++j) {
        scores[j] = std::exp(scores[j] - max_score);
        total += scores[j];
      }
      float* out = &a.attn[t * q_dim + h * hd];
      std::fill(out, out + hd, 0.0f);
      const float inv_total = static_cast<float>(1.0 / total);
      for (int64_t j = first; j <= position; ++j) {
        const float p = scores[j] * inv_total;
        const float* value = &values[j * kv_dim + kv_offset];
        for (int i = 0; i < hd; ++i) out[i] += p * value[i];
      }
    }
  }
  MatMul(a.attn.data(), T, q_dim, lw.o, a.attn_out.data(), d, false);
}

// Gemma3nTextMLP on a.normed at width m (slabs 0..slabs-1), into a.ffn_out:
// down((gelu(topk(gate(x))) * up(x))), topk the Gaussian cutoff when z != 0.
void FeedForward(const Config& c, const LayerWeights& lw, int64_t m, int slabs, bool sparse, float z,
                 Activations& a) {
  const int64_t T = a.T, d = a.d;
  int64_t begin = 0;
  for (int j = 0; j < slabs; ++j) {
    MatMul(a.normed.data(), T, d, lw.gate[j], a.gate.data() + begin, m, false);
    MatMul(a.normed.data(), T, d, lw.up[j], a.up.data() + begin, m, false);
    begin = lw.ffn_slab_ends[j];
  }
  for (int64_t t = 0; t < T; ++t) {
    float* g = &a.gate[t * m];
    if (sparse) GaussianTopK(g, m, z);
    Activate(c.activation, g, m);
    for (int64_t i = 0; i < m; ++i) g[i] *= a.up[t * m + i];
  }
  begin = 0;
  for (int j = 0; j < slabs; ++j) {
    MatMul(a.gate.data() + begin, T, m, lw.down[j], a.ffn_out.data(), d, /*accumulate=*/j > 0);
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
// altup_active_idx is) += RMSNorm(W_proj · (act(W_gate · scaled s_active) * ple[l])).
void InjectPerLayerInput(const Config& c, const LayerWeights& lw, int layer, Activations& a) {
  const int64_t T = a.T, d = a.d, dp = c.hidden_size_per_layer_input, L = c.num_layers;
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
    Activate(c.activation, row, dp);
    const float* input = &a.ple[(t * L + layer) * dp];
    for (int64_t k = 0; k < dp; ++k) row[k] *= input[k];
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

// Gemma3nTextDecoderLayer.forward for a kept layer.
void DecoderLayer(const Config& c, const LayerWeights& lw, int layer, int source, const float* inv_freq,
                  int64_t ffn_width, int ffn_slabs, float sparsity_z, int64_t start, KvCache& cache, Activations& a) {
  const int64_t T = a.T, d = a.d;
  const float eps = static_cast<float>(c.rms_norm_eps);
  AltUpPredict(c, lw, a);
  for (int64_t t = 0; t < T; ++t) {
    RmsNorm(a.prediction(c.altup_active_idx, t), lw.input_norm.data(), d, eps, &a.normed[t * d]);
  }
  Laurel(c, lw, a);
  Attention(c, lw, layer, source, inv_freq, start, cache, a);
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
  FeedForward(c, lw, ffn_width, ffn_slabs, c.activation_sparsity[layer] > 0, sparsity_z, a);
  for (int64_t t = 0; t < T; ++t) {
    float* row = &a.ffn_out[t * d];
    RmsNorm(row, lw.post_ffw_norm.data(), d, eps, row);
    for (int64_t k = 0; k < d; ++k) row[k] += a.attn_laurel[t * d + k];
  }
  AltUpCorrect(c, lw, a);
  InjectPerLayerInput(c, lw, layer, a);
}

// Gemma3nTextModel.forward after the layers and Gemma3nForCausalLM's head:
// unembed streams 1..N-1 to stream 0's magnitude, average the N streams,
// final norm, tied LM head, soft-cap. Rows [first_row, T).
std::vector<float> Logits(const Config& c, const Weights& w, int64_t first_row, Activations& a) {
  const int64_t d = a.d, rows = a.T - first_row;
  const int N = c.altup_num_inputs;
  std::vector<float> hidden(rows * d), unembedded(rows * d);
  std::copy(a.stream(0, first_row), a.stream(0, first_row) + rows * d, hidden.begin());
  for (int i = 1; i < N; ++i) {
    MatMul(a.stream(i, first_row), rows, d, w.altup_unembed_projections[i - 1], unembedded.data(), d, false);
    for (int64_t r = 0; r < rows; ++r) {
      float* row = &unembedded[r * d];
      MatchMagnitude(row, d, static_cast<float>(std::sqrt(MeanSquare(a.stream(0, first_row + r), d))));
      for (int64_t k = 0; k < d; ++k) hidden[r * d + k] += row[k];
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* row = &hidden[r * d];
    for (int64_t k = 0; k < d; ++k) row[k] /= static_cast<float>(N);
    RmsNorm(row, w.final_norm.data(), d, static_cast<float>(c.rms_norm_eps), row);
  }
  std::vector<float> logits(rows * c.vocab_size);
  MatMul(hidden.data(), rows, d, w.lm_head, logits.data(), c.vocab_size, false);
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
  std::unique_ptr<Model> model(new Model());
  model->options_ = options;
  MF_ASSIGN_OR_RETURN(model->config_, LoadConfig(directory + "/config.json"));
  MF_ASSIGN_OR_RETURN(model->checkpoint_, Checkpoint::Open(directory));
  MF_ASSIGN_OR_RETURN(model->weights_, LoadWeights(model->config_, *model->checkpoint_, options));
  if (const std::string path = directory + "/tokenizer.model"; std::filesystem::exists(path)) {
    MF_ASSIGN_OR_RETURN(model->tokenizer_, Tokenizer::Load(path, model->config_.vocab_size));
  }
  const Config& c = model->config_;
  model->inv_freq_full_ = InverseFrequencies(c.rope_theta_full, c.head_dim);
  model->inv_freq_sliding_ = InverseFrequencies(c.rope_theta_sliding, c.head_dim);
  for (double sparsity : c.activation_sparsity) {
    model->sparsity_z_.push_back(sparsity > 0 ? static_cast<float>(NormalQuantile(sparsity)) : 0.0f);
  }
  return model;
}

absl::StatusOr<Slice> Model::MakeSlice(const std::vector<int64_t>& widths_of_kept_layers,
                                       const std::vector<int>& skipped_layers, std::string name) const {
  return Slice::Create(config_, options_.ffn_granule, widths_of_kept_layers, skipped_layers, std::move(name));
}

absl::StatusOr<std::vector<float>> Model::Forward(const Slice& slice, absl::Span<const int32_t> tokens,
                                                  KvCache& cache, const ForwardOptions& options) const {
  const Config& c = config_;
  const int64_t T = static_cast<int64_t>(tokens.size()), L = c.num_layers;

  // Every input is checked before anything changes.
  if (T == 0) return absl::InvalidArgumentError("Forward: no tokens");
  if (static_cast<int64_t>(slice.ffn_width.size()) != L || static_cast<int64_t>(slice.skipped.size()) != L ||
      static_cast<int64_t>(slice.kv_source.size()) != L) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: slice '", slice.name, "' is not for a ", L, "-layer model"));
  }
  for (int64_t t = 0; t < T; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: token ", tokens[t], " outside [0, ", c.vocab_size, ")"));
    }
  }
  if (cache.length + T > c.max_position_embeddings) {
    return absl::OutOfRangeError(absl::StrCat("Forward: ", cache.length + T, " positions exceed max_position_embeddings ",
                                              c.max_position_embeddings));
  }
  // A slice made for another config could name K/V sources this model's
  // weights do not have (no k/v projections in shared layers).
  absl::StatusOr<std::vector<int>> sources = KvSourceLayers(c, slice.skipped);
  if (!sources.ok() || *sources != slice.kv_source) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: slice '", slice.name, "' was not made for this model"));
  }
  const int64_t ple_floats = L * c.hidden_size_per_layer_input;
  if (options.ple_cache != nullptr && options.ple_cache->floats_per_token() != ple_floats) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: the PLE cache holds ", options.ple_cache->floats_per_token(),
                                                   " floats per token, this model needs ", ple_floats));
  }
  std::vector<int> ffn_slabs(L, 0);  // slabs each kept layer runs
  int64_t max_ffn = 1;
  for (int l = 0; l < L; ++l) {
    if (slice.skipped[l]) continue;
    const std::vector<int64_t>& ends = weights_.layers[l].ffn_slab_ends;
    auto it = std::find(ends.begin(), ends.end(), slice.ffn_width[l]);
    if (it == ends.end()) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: slice '", slice.name, "' layer ", l, " width ",
                                                     slice.ffn_width[l], " is not a slab boundary of this model"));
    }
    ffn_slabs[l] = static_cast<int>(it - ends.begin()) + 1;
    max_ffn = std::max(max_ffn, slice.ffn_width[l]);
  }
  if (cache.length == 0 && cache.kv_source.empty()) {
    cache.kv_source = slice.kv_source;
    cache.k.assign(L, {});
    cache.v.assign(L, {});
  } else if (cache.kv_source != slice.kv_source) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Forward: slice '", slice.name, "' skips other layers than the slice that filled this KV cache"));
  }

  const int64_t start = cache.length;
  Activations a(c, T, max_ffn, start + T);
  std::vector<float> h0(T * c.hidden_size);
  Embed(c, weights_, tokens, h0.data());
  PerLayerInputs(c, weights_, tokens, h0.data(), options.ple_cache, a.ple.data());
  InitStreams(c, weights_, h0.data(), a);
  if (options.observer != nullptr) (*options.observer)(-1, a.streams);
  for (int l = 0; l < L; ++l) {
    if (!slice.skipped[l]) {
      const float* inv_freq =
          c.layer_types[l] == LayerType::kSliding ? inv_freq_sliding_.data() : inv_freq_full_.data();
      DecoderLayer(c, weights_.layers[l], l, slice.kv_source[l], inv_freq, slice.ffn_width[l], ffn_slabs[l],
                   sparsity_z_[l], start, cache, a);
    }
    if (options.observer != nullptr) (*options.observer)(l, a.streams);  // a skipped layer is the identity
  }
  cache.length += T;
  return Logits(c, weights_, options.all_logits ? 0 : T - 1, a);
}

}  // namespace matformer::gemma3n
