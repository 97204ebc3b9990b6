#ifndef MATFORMER_CORE_KERNELS_AVX2_MATH_H_
#define MATFORMER_CORE_KERNELS_AVX2_MATH_H_

// Internal to core/kernels: 8-lane f32 helpers for the files compiled with
// -mavx2 -mfma (attention.cc, ops.cc; core/CMakeLists.txt). Models check
// CheckCpuRunsKernels before any of it runs.

#include <immintrin.h>

#include <cstdint>

namespace matformer::kernels_internal {

inline constexpr int kLanes = 8;

inline float HorizontalMax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

inline float HorizontalSum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// exp(x) for float vectors: inputs clamped to [-87, 88] (the result stays a
// normal float), x = k ln2 + r with |r| <= ln2/2 (ln2 in two parts),
// exp(r) = 1 + r + r^2 P(r) with the Cephes polynomial P, 2^k built in the
// exponent bits. Relative error about 1e-7. The constants serve every width.
inline constexpr float kExpMin = -87.0f, kExpMax = 88.0f, kLog2e = 1.44269504088896341f;
inline constexpr float kLn2High = 0.693359375f, kLn2Low = -2.12194440e-4f;
inline constexpr float kExpPolynomial[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                           4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

inline __m256 Exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpMin)), _mm256_set1_ps(kExpMax));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Low), _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2High), x));
  __m256 p = _mm256_set1_ps(kExpPolynomial[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPolynomial[i]));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
}

// Lanes [0, count) set (count <= 8), for masked loads and stores of a tail.
inline __m256i TailMask(int64_t count) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), lane);
}

// The vector type of attention_kernel.h for AVX2: 8 lanes.
struct Avx2 {
  using Vec = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kRegisters = 16;
  static Vec Zero() { return _mm256_setzero_ps(); }
  static Vec Set1(float x) { return _mm256_set1_ps(x); }
  static Vec Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static void LoadBf16Pair(const uint16_t* p, Vec& even, Vec& odd) {
    const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  static Vec LoadInt8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static Vec Broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static Vec Fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec Mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  static Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Vec Sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  static Vec Max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
  static Vec Exp(Vec x) { return Exp8(x); }
  static float ReduceMax(Vec v) { return HorizontalMax(v); }
  static float ReduceSum(Vec v) { return HorizontalSum(v); }
  static float First(Vec v) { return _mm256_cvtss_f32(v); }
  static Vec KeepInRange(Vec v, int slot, int lo, int hi, float otherwise) {
    const __m256i index = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(slot));
    const __m256i below = _mm256_cmpgt_epi32(_mm256_set1_epi32(lo), index);   // index < lo
    const __m256i inside = _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), index);  // index < hi
    const __m256 keep = _mm256_castsi256_ps(_mm256_andnot_si256(below, inside));
    return _mm256_blendv_ps(_mm256_set1_ps(otherwise), v, keep);
  }
};

}  // namespace matformer::kernels_internal

#endif  // MATFORMER_CORE_KERNELS_AVX2_MATH_H_
