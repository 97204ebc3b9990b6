#include "core/kernels/ops.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace matformer {
namespace {

// exp(x) for float, in arithmetic a vectorizer can handle (std::exp is a
// call per element): x = k ln2 + r with |r| <= ln2/2, exp(r) by the Cephes
// polynomial (relative error about 1e-7), times 2^k built in the exponent
// bits. Inputs are clamped to [-87, 88], where the result is a normal float.
#pragma omp declare simd
inline float FastExp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(k) + 127) << 23);
}

}  // namespace

void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* y) {
  double sum_squares = 0.0;
  for (int64_t i = 0; i < n; ++i) sum_squares += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(sum_squares / n + eps));
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

void Activate(Activation activation, float* x, int64_t n) {
  switch (activation) {
    case Activation::kGeluTanh: {
      // 0.5 v (1 + tanh(y)) = v / (1 + exp(-2y)).
      constexpr float kSqrt2OverPi = 0.7978845608028654f;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        x[i] = v / (1.0f + FastExp(-2.0f * kSqrt2OverPi * (v + 0.044715f * v * v * v)));
      }
      return;
    }
    case Activation::kSilu:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + FastExp(-x[i]));
      return;
  }
}

void ApplyRope(float* x, int heads, int head_dim, int64_t position, const float* inv_freq) {
  const int half = head_dim / 2;
  float cos_table[1024], sin_table[1024];  // head_dim <= 1024 is a config limit
  for (int i = 0; i < half; ++i) {
    const float angle = static_cast<float>(position) * inv_freq[i];
    cos_table[i] = std::cos(angle);
    sin_table[i] = std::sin(angle);
  }
  for (int h = 0; h < heads; ++h) {
    float* v = x + static_cast<int64_t>(h) * head_dim;
    for (int i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cos_table[i] - b * sin_table[i];
      v[i + half] = b * cos_table[i] + a * sin_table[i];
    }
  }
}

float Bf16ToF32(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

uint16_t F32ToBf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace matformer
