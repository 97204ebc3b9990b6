#ifndef MATFORMER_CORE_KERNELS_AVX512_MATH_H_
#define MATFORMER_CORE_KERNELS_AVX512_MATH_H_

// Internal to core/kernels: the 16-lane f32 vector type of the attention
// kernel (attention_kernel.h's V), for files compiled with -mavx512f
// (attention_avx512.cc, attention_amx.cc); callers check the CPU first.

#include <immintrin.h>

#include <cstdint>

#include "core/kernels/avx2_math.h"

namespace matformer::kernels_internal {
// Internal linkage: the files that include this are compiled with different
// instruction-set flags, and one shared copy of an inline function could
// carry instructions another file's CPU check does not cover.
namespace {

struct Avx512 {
  using Vec = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kRegisters = 32;
  static Vec Zero() { return _mm512_setzero_ps(); }
  static Vec Set1(float x) { return _mm512_set1_ps(x); }
  static Vec Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static void LoadBf16Pair(const uint16_t* p, Vec& even, Vec& odd) {
    const __m512i pairs = _mm512_loadu_si512(p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  static Vec LoadInt8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static Vec Broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static Vec Fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec Mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  static Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static Vec Sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  static Vec Max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
  // Exp8's arithmetic and constants (avx2_math.h) on 16 lanes.
  static Vec Exp(Vec x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kExpMin)), _mm512_set1_ps(kExpMax));
    const Vec k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const Vec r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Low), _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2High), x));
    Vec p = _mm512_set1_ps(kExpPolynomial[0]);
    for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPolynomial[i]));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i exponent = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(exponent));
  }
  static float ReduceMax(Vec v) { return _mm512_reduce_max_ps(v); }
  static float ReduceSum(Vec v) { return _mm512_reduce_add_ps(v); }
  static float First(Vec v) { return _mm512_cvtss_f32(v); }
  static Vec KeepInRange(Vec v, int slot, int lo, int hi, float otherwise) {
    const __m512i index = _mm512_add_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(slot));
    const __mmask16 keep = _mm512_cmpge_epi32_mask(index, _mm512_set1_epi32(lo)) &
                           _mm512_cmplt_epi32_mask(index, _mm512_set1_epi32(hi));
    return _mm512_mask_blend_ps(keep, _mm512_set1_ps(otherwise), v);
  }
};

}  // namespace
}  // namespace matformer::kernels_internal

#endif  // MATFORMER_CORE_KERNELS_AVX512_MATH_H_
