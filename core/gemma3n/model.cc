#include "core/gemma3n/model.h"

#include <algorithm>
#include <cmath>

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

// Row views of a [rows][cols] buffer.
struct Matrix {
  float* data;
  int64_t cols;
  float* row(int64_t r) const { return data + r * cols; }
};

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
  const Weights& w = weights_;
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t d = c.hidden_size, dp = c.hidden_size_per_layer_input, L = c.num_layers;
  const int N = c.altup_num_inputs, active = c.altup_active_idx;
  const int hd = c.head_dim, H = c.num_heads, KV = c.num_kv_heads;
  const int64_t q_dim = int64_t{H} * hd, kv_dim = int64_t{KV} * hd;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const LayerObserver* observer = options.observer;

  // --- Checks: every request input is validated before anything runs.
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
  if (options.ple_cache != nullptr && options.ple_cache->floats_per_token() != L * dp) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: the PLE cache holds ", options.ple_cache->floats_per_token(),
                                                   " floats per token, this model needs ", L * dp));
  }
  std::vector<int> ffn_slabs(L, 0);  // slabs each kept layer runs
  for (int l = 0; l < L; ++l) {
    if (slice.skipped[l]) continue;
    const std::vector<int64_t>& ends = w.layers[l].ffn_slab_ends;
    auto it = std::find(ends.begin(), ends.end(), slice.ffn_width[l]);
    if (it == ends.end()) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: slice '", slice.name, "' layer ", l, " width ",
                                                     slice.ffn_width[l], " is not a slab boundary of this model"));
    }
    ffn_slabs[l] = static_cast<int>(it - ends.begin()) + 1;
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

  // --- Embeddings (Gemma3nTextScaledWordEmbedding) and per-layer inputs
  // (Gemma3nTextModel.project_per_layer_inputs):
  //   ple[t, l] = (RMSNorm(W_plmp · h0 · d^-0.5)[l] + E_ple[t, l] · sqrt(d_ple)) · 2^-0.5
  std::vector<float> h0(T * d);
  const float embed_scale = std::sqrt(static_cast<float>(d));
  for (int64_t t = 0; t < T; ++t) {
    float* row = h0.data() + t * d;
    w.embed.RowToF32(tokens[t], row);
    for (int64_t k = 0; k < d; ++k) row[k] *= embed_scale;
  }
  std::vector<float> ple(T * L * dp);
  std::vector<int64_t> misses;  // tokens whose per-layer inputs are computed here
  for (int64_t t = 0; t < T; ++t) {
    if (options.ple_cache == nullptr || !options.ple_cache->Lookup(tokens[t], &ple[t * L * dp])) misses.push_back(t);
  }
  if (!misses.empty()) {
    const int64_t M = static_cast<int64_t>(misses.size());
    std::vector<float> h0_misses(M * d), projected(M * L * dp), table_row(L * dp);
    for (int64_t i = 0; i < M; ++i) std::copy_n(&h0[misses[i] * d], d, &h0_misses[i * d]);
    MatMul(h0_misses.data(), M, d, w.per_layer_model_projection, projected.data(), L * dp, /*accumulate=*/false);
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
      if (options.ple_cache != nullptr) options.ple_cache->Insert(tokens[t], &ple[t * L * dp]);
    }
  }

  // --- AltUp streams: stream 0 is h0, stream i the i-th projection of h0
  // scaled to h0's magnitude. streams[i] is a [T][d] block.
  std::vector<float> streams(static_cast<size_t>(N) * T * d);
  auto stream = [&](std::vector<float>& buffer, int i) { return Matrix{buffer.data() + i * T * d, d}; };
  std::copy(h0.begin(), h0.end(), streams.begin());
  for (int i = 1; i < N; ++i) {
    const Matrix s = stream(streams, i);
    MatMul(h0.data(), T, d, w.altup_projections[i - 1], s.data, d, false);
    for (int64_t t = 0; t < T; ++t) {
      MatchMagnitude(s.row(t), d, static_cast<float>(std::sqrt(MeanSquare(h0.data() + t * d, d))));
    }
  }
  if (observer != nullptr) (*observer)(-1, streams);

  // Scratch for the layers, sized for the widest layer.
  int64_t max_ffn = 0;
  for (int l = 0; l < L; ++l) max_ffn = std::max(max_ffn, slice.ffn_width[l]);
  std::vector<float> predictions(streams.size());
  std::vector<float> modalities(T * N), coefs(N * N), scratch(std::max<int64_t>(d, dp));
  std::vector<float> x(T * d), x_normed(T * d), laurel(T * c.laurel_rank), laurel_out(T * d);
  std::vector<float> q(T * q_dim), k_new(T * kv_dim), v_new(T * kv_dim), attn(T * q_dim), o(T * d);
  std::vector<float> gate(T * std::max<int64_t>(max_ffn, 1)), up(gate.size()), ffn_out(T * d);
  std::vector<float> per_layer(T * dp), per_layer_out(T * d), scores(start + T);

  for (int l = 0; l < L; ++l) {
    if (slice.skipped[l]) {
      if (observer != nullptr) (*observer)(l, streams);
      continue;
    }
    const LayerWeights& lw = w.layers[l];
    const bool sliding = c.layer_types[l] == LayerType::kSliding;

    // AltUp predict: pred_i = s_i + sum_j C[i][j] s_j, C = reshape(W_pred · modalities, [N, N]).
    const Matrix s_active = stream(streams, active);
    for (int64_t t = 0; t < T; ++t) {
      RouterModalities(lw, s_active.row(t), d, N, eps, scratch.data(), &modalities[t * N]);
      for (int ij = 0; ij < N * N; ++ij) {
        double sum = 0;
        for (int m = 0; m < N; ++m) sum += static_cast<double>(lw.prediction_coefs[ij * N + m]) * modalities[t * N + m];
        coefs[ij] = static_cast<float>(sum);
      }
      for (int i = 0; i < N; ++i) {
        float* out = stream(predictions, i).row(t);
        const float* own = stream(streams, i).row(t);
        for (int64_t k = 0; k < d; ++k) {
          float sum = own[k];
          for (int j = 0; j < N; ++j) sum += coefs[i * N + j] * stream(streams, j).row(t)[k];
          out[k] = sum;
        }
      }
    }
    const Matrix active_prediction = stream(predictions, active);
    for (int64_t t = 0; t < T; ++t) RmsNorm(active_prediction.row(t), lw.input_norm.data(), d, eps, &x_normed[t * d]);

    // LAuReL (Gemma3nTextLaurelBlock): x + RMSNorm(right(left(x))).
    MatMul(x_normed.data(), T, d, lw.laurel_left, laurel.data(), c.laurel_rank, false);
    MatMul(laurel.data(), T, c.laurel_rank, lw.laurel_right, laurel_out.data(), d, false);
    for (int64_t t = 0; t < T; ++t) {
      float* row = &laurel_out[t * d];
      RmsNorm(row, lw.post_laurel_norm.data(), d, eps, row);
      for (int64_t k = 0; k < d; ++k) row[k] += x_normed[t * d + k];
    }

    // Attention (Gemma3nTextAttention): q/k RMSNorm per head then RoPE, v
    // RMSNorm without scale, scale 1; shared layers read their source's K/V.
    const float* inv_freq = sliding ? inv_freq_sliding_.data() : inv_freq_full_.data();
    MatMul(x_normed.data(), T, d, lw.q, q.data(), q_dim, false);
    for (int64_t t = 0; t < T; ++t) {
      for (int h = 0; h < H; ++h) {
        float* head = &q[t * q_dim + h * hd];
        RmsNorm(head, lw.q_norm.data(), hd, eps, head);
      }
      ApplyRope(&q[t * q_dim], H, hd, start + t, inv_freq);
    }
    const int source = slice.kv_source[l];
    if (source == l) {
      MatMul(x_normed.data(), T, d, lw.k, k_new.data(), kv_dim, false);
      MatMul(x_normed.data(), T, d, lw.v, v_new.data(), kv_dim, false);
      for (int64_t t = 0; t < T; ++t) {
        for (int h = 0; h < KV; ++h) {
          float* key = &k_new[t * kv_dim + h * hd];
          RmsNorm(key, lw.k_norm.data(), hd, eps, key);
          RmsNormNoScale(&v_new[t * kv_dim + h * hd], hd, eps);
        }
        ApplyRope(&k_new[t * kv_dim], KV, hd, start + t, inv_freq);
      }
      cache.k[l].insert(cache.k[l].end(), k_new.begin(), k_new.end());
      cache.v[l].insert(cache.v[l].end(), v_new.begin(), v_new.end());
    }
    const std::vector<float>& keys = cache.k[source];
    const std::vector<float>& values = cache.v[source];
    const int group = H / KV;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t position = start + t;
      // Visible keys: causal, and for sliding layers position - j < window.
      const int64_t first = sliding ? std::max<int64_t>(0, position - c.sliding_window + 1) : 0;
      for (int h = 0; h < H; ++h) {
        const float* query = &q[t * q_dim + h * hd];
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
        float* out = &attn[t * q_dim + h * hd];
        std::fill(out, out + hd, 0.0f);
        const float inv_total = static_cast<float>(1.0 / total);
        for (int64_t j = first; j <= position; ++j) {
          const float p = scores[j] * inv_total;
          const float* value = &values[j * kv_dim + kv_offset];
          for (int i = 0; i < hd; ++i) out[i] += p * value[i];
        }
      }
    }
    MatMul(attn.data(), T, q_dim, lw.o, o.data(), d, false);

    // Gemma3nTextDecoderLayer: residual, LAuReL average, FFN, residual.
    for (int64_t t = 0; t < T; ++t) {
      float* row = &o[t * d];
      RmsNorm(row, lw.post_attention_norm.data(), d, eps, row);
      const float* prediction = active_prediction.row(t);
      float* combined = &x[t * d];  // attn_laurel
      for (int64_t k = 0; k < d; ++k) {
        combined[k] = (prediction[k] + row[k] + laurel_out[t * d + k]) * static_cast<float>(M_SQRT1_2);
      }
      RmsNorm(combined, lw.pre_ffw_norm.data(), d, eps, &x_normed[t * d]);
    }

    // Nested FFN at width m: slabs 0..ffn_slabs[l]-1 of gate/up rows and down columns.
    const int64_t m = slice.ffn_width[l];
    int64_t begin = 0;
    for (int j = 0; j < ffn_slabs[l]; ++j) {
      MatMul(x_normed.data(), T, d, lw.gate[j], gate.data() + begin, m, false);
      MatMul(x_normed.data(), T, d, lw.up[j], up.data() + begin, m, false);
      begin = lw.ffn_slab_ends[j];
    }
    for (int64_t t = 0; t < T; ++t) {
      float* g = &gate[t * m];
      if (c.activation_sparsity[l] > 0) GaussianTopK(g, m, sparsity_z_[l]);
      Activate(c.activation, g, m);
      for (int64_t i = 0; i < m; ++i) g[i] *= up[t * m + i];
    }
    begin = 0;
    for (int j = 0; j < ffn_slabs[l]; ++j) {
      MatMul(gate.data() + begin, T, m, lw.down[j], ffn_out.data(), d, /*accumulate=*/j > 0);
      begin = lw.ffn_slab_ends[j];
    }
    for (int64_t t = 0; t < T; ++t) {
      float* row = &ffn_out[t * d];
      RmsNorm(row, lw.post_ffw_norm.data(), d, eps, row);
      for (int64_t k = 0; k < d; ++k) row[k] += x[t * d + k];  // the layer's output for the active stream
    }

    // AltUp correct: s_i = pred_i + (out - pred_active) * (W_corr · modalities(out) + 1)_i.
    for (int64_t t = 0; t < T; ++t) {
      const float* out = &ffn_out[t * d];
      RouterModalities(lw, out, d, N, eps, scratch.data(), &modalities[t * N]);
      for (int i = 0; i < N; ++i) {
        double sum = 1.0;
        for (int m2 = 0; m2 < N; ++m2) sum += static_cast<double>(lw.correction_coefs[i * N + m2]) * modalities[t * N + m2];
        const float coef = static_cast<float>(sum);
        float* s = stream(streams, i).row(t);
        const float* prediction = stream(predictions, i).row(t);
        for (int64_t k = 0; k < d; ++k) s[k] = prediction[k] + (out[k] - active_prediction.row(t)[k]) * coef;
      }
    }

    // Per-layer input: streams 1..N-1 += RMSNorm(W_proj · (act(W_gate · scaled active) * ple[l])).
    for (int64_t t = 0; t < T; ++t) {
      const float* corrected = stream(streams, active).row(t);
      float* row = &x[t * d];
      for (int64_t k = 0; k < d; ++k) row[k] = c.altup_correct_scale ? corrected[k] * lw.correct_output_scale[k] : corrected[k];
    }
    MatMul(x.data(), T, d, lw.per_layer_input_gate, per_layer.data(), dp, false);
    for (int64_t t = 0; t < T; ++t) {
      float* row = &per_layer[t * dp];
      Activate(c.activation, row, dp);
      const float* input = &ple[(t * L + l) * dp];
      for (int64_t k = 0; k < dp; ++k) row[k] *= input[k];
    }
    MatMul(per_layer.data(), T, dp, lw.per_layer_projection, per_layer_out.data(), d, false);
    for (int64_t t = 0; t < T; ++t) {
      float* row = &per_layer_out[t * d];
      RmsNorm(row, lw.post_per_layer_input_norm.data(), d, eps, row);
      // HF adds to corrected_predictions[1:], whatever altup_active_idx is.
      for (int i = 1; i < N; ++i) {
        float* s = stream(streams, i).row(t);
        for (int64_t k = 0; k < d; ++k) s[k] += row[k];
      }
    }
    if (observer != nullptr) (*observer)(l, streams);
  }
  cache.length += T;

  // --- Output: unembed streams 1..N-1 to stream 0's magnitude, average all,
  // final norm, tied LM head, soft-cap.
  const int64_t first_row = options.all_logits ? 0 : T - 1;
  const int64_t rows = T - first_row;
  std::vector<float> hidden(rows * d), unembedded(rows * d);
  const Matrix s0 = stream(streams, 0);
  std::copy(s0.row(first_row), s0.row(T), hidden.begin());
  for (int i = 1; i < N; ++i) {
    MatMul(stream(streams, i).row(first_row), rows, d, w.altup_unembed_projections[i - 1], unembedded.data(), d, false);
    for (int64_t r = 0; r < rows; ++r) {
      float* row = &unembedded[r * d];
      MatchMagnitude(row, d, static_cast<float>(std::sqrt(MeanSquare(s0.row(first_row + r), d))));
      for (int64_t k = 0; k < d; ++k) hidden[r * d + k] += row[k];
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* row = &hidden[r * d];
    for (int64_t k = 0; k < d; ++k) row[k] /= static_cast<float>(N);
    RmsNorm(row, w.final_norm.data(), d, eps, row);
  }
  std::vector<float> logits(rows * c.vocab_size);
  MatMul(hidden.data(), rows, d, w.lm_head, logits.data(), c.vocab_size, false);
  if (c.final_logit_softcapping > 0) {
    const float cap = static_cast<float>(c.final_logit_softcapping);
    for (float& logit : logits) logit = std::tanh(logit / cap) * cap;
  }
  return logits;
}

}  // namespace matformer::gemma3n
