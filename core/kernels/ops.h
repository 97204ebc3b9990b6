#ifndef MATFORMER_CORE_KERNELS_OPS_H_
#define MATFORMER_CORE_KERNELS_OPS_H_

#include <algorithm>
#include <cstdint>

#include "core/model/config.h"

// Element-wise and per-row operations of the forward pass, in f32. The heavy
// lifting (matmuls) is in matmul.h; these are bandwidth-trivial by comparison.
namespace matformer {

// y = x / sqrt(mean(x^2) + eps) * w over n elements (y may alias x).
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* y);

// In-place exp over n elements (relative error about 1e-7; inputs clamped to
// [-87, 88]), vectorized.
void ExpInPlace(float* x, int64_t n);

// In-place activation over n elements.
void Activate(Activation activation, float* x, int64_t n);

// Rotary embedding (rotate-half) of `heads` vectors of head_dim at `position`.
// inv_freq has head_dim / 2 entries.
void ApplyRope(float* x, int heads, int head_dim, int64_t position, const float* inv_freq);

// scores[slot] = scale * query · key[slot] for the slots of one paged-KV key
// tile ([head_dim][block_tokens], see KvPool): vector FMAs across slots, no
// horizontal sums. Inline: it is the innermost call of attention. The
// server's 16-slot blocks get a version whose sums stay in registers.
inline void ScoreKeyTile(const float* query, const float* key_tile, int head_dim, int block_tokens, float scale,
                         float* scores) {
  if (block_tokens == 16) {
    float sums[16] = {};
    for (int j = 0; j < head_dim; ++j) {
      const float qj = query[j] * scale;
      const float* keys_j = key_tile + j * 16;
#pragma omp simd
      for (int slot = 0; slot < 16; ++slot) sums[slot] += qj * keys_j[slot];
    }
    std::copy_n(sums, 16, scores);
    return;
  }
  std::fill_n(scores, block_tokens, 0.0f);
  for (int j = 0; j < head_dim; ++j) {
    const float qj = query[j] * scale;
    const float* keys_j = key_tile + static_cast<int64_t>(j) * block_tokens;
#pragma omp simd
    for (int slot = 0; slot < block_tokens; ++slot) scores[slot] += qj * keys_j[slot];
  }
}

// f32 round trip through bf16 (round to nearest even), the engine's bf16 model.
float Bf16ToF32(uint16_t bits);
uint16_t F32ToBf16(float value);

}  // namespace matformer

#endif  // MATFORMER_CORE_KERNELS_OPS_H_
