#ifndef MATFORMER_CORE_KERNELS_OPS_H_
#define MATFORMER_CORE_KERNELS_OPS_H_

#include <cstdint>

#include "core/model/config.h"

// Element-wise and per-row operations of the forward pass, in f32 (AVX2 + FMA,
// like attention.h). The heavy lifting is in matmul.h and attention.h.
namespace matformer {

// y = x / sqrt(mean(x^2) + eps) * w over n elements (y may alias x).
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* y);

// x[i] = activation(x[i]) * other[i] for i < n: the gated FFN's and the
// per-layer input's gate, in one pass.
void ActivateAndMultiply(Activation activation, float* x, const float* other, int64_t n);

// Rotary embedding (rotate-half) in two steps, so that a position's angles
// (half = head_dim / 2 cosines and sines of position * inv_freq) are computed
// once and shared by its queries and keys (and, in the engine, its layers).
void RopeAngles(int64_t position, const float* inv_freq, int half, float* cos_out, float* sin_out);
// Rotates `heads` vectors of head_dim by a position's angles.
void ApplyRope(float* x, int heads, int head_dim, const float* cos_table, const float* sin_table);

// f32 round trip through bf16 (round to nearest even), the engine's bf16 model.
float Bf16ToF32(uint16_t bits);
uint16_t F32ToBf16(float value);

}  // namespace matformer

#endif  // MATFORMER_CORE_KERNELS_OPS_H_
