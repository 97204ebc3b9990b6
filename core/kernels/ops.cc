#include "core/kernels/ops.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/kernels/avx2_math.h"

namespace matformer {
namespace {

using kernels_internal::Exp8;
using kernels_internal::kLanes;
using kernels_internal::TailMask;

// x = f(x) * other over n elements, 8 lanes at a time; the tail through
// masked loads and stores, so every element takes the same arithmetic.
template <typename F>
void MapAndMultiply(float* x, const float* other, int64_t n, F f) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    _mm256_storeu_ps(x + i, _mm256_mul_ps(f(_mm256_loadu_ps(x + i)), _mm256_loadu_ps(other + i)));
  }
  if (i < n) {
    const __m256i mask = TailMask(n - i);
    _mm256_maskstore_ps(x + i, mask, _mm256_mul_ps(f(_mm256_maskload_ps(x + i, mask)), _mm256_maskload_ps(other + i, mask)));
  }
}

}  // namespace

void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* y) {
  // The sum of squares in double: Gemma 3n's residual stream reaches 1e4.
  __m256d sum_low = _mm256_setzero_pd(), sum_high = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256d low = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    const __m256d high = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    sum_low = _mm256_fmadd_pd(low, low, sum_low);
    sum_high = _mm256_fmadd_pd(high, high, sum_high);
  }
  double lanes[4];
  _mm256_storeu_pd(lanes, _mm256_add_pd(sum_low, sum_high));
  double sum_squares = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) sum_squares += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(sum_squares / n + eps));
  const __m256 scale_v = _mm256_set1_ps(scale);
  for (i = 0; i + kLanes <= n; i += kLanes) {
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale_v), _mm256_loadu_ps(w + i)));
  }
  for (; i < n; ++i) y[i] = x[i] * scale * w[i];
}

void ActivateAndMultiply(Activation activation, float* x, const float* other, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  switch (activation) {
    case Activation::kGeluTanh:
      // 0.5 v (1 + tanh(y)) = v / (1 + exp(-2y)), y = sqrt(2/pi) (v + 0.044715 v^3).
      MapAndMultiply(x, other, n, [&](__m256 v) {
        const __m256 cube_term = _mm256_mul_ps(_mm256_set1_ps(0.044715f), _mm256_mul_ps(v, _mm256_mul_ps(v, v)));
        const __m256 minus_2y = _mm256_mul_ps(_mm256_set1_ps(-2.0f * 0.7978845608028654f), _mm256_add_ps(v, cube_term));
        return _mm256_div_ps(v, _mm256_add_ps(one, Exp8(minus_2y)));
      });
      return;
    case Activation::kSilu:
      MapAndMultiply(x, other, n, [&](__m256 v) {
        return _mm256_div_ps(v, _mm256_add_ps(one, Exp8(_mm256_sub_ps(_mm256_setzero_ps(), v))));
      });
      return;
  }
}

void RopeAngles(int64_t position, const float* inv_freq, int half, float* cos_out, float* sin_out) {
  for (int i = 0; i < half; ++i) {
    const float angle = static_cast<float>(position) * inv_freq[i];
    cos_out[i] = std::cos(angle);
    sin_out[i] = std::sin(angle);
  }
}

void ApplyRope(float* x, int heads, int head_dim, const float* cos_table, const float* sin_table) {
  const int half = head_dim / 2;
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
