#ifndef MATFORMER_CORE_KERNELS_SMALL_M_BF16_H_
#define MATFORMER_CORE_KERNELS_SMALL_M_BF16_H_

// Internal to core/kernels: the bf16 matmul for few rows, where oneDNN 2.6
// spends most of its time on per-call overhead instead of streaming weights.

#include <cstdint>

namespace matformer::kernels_internal {

// Blocking of the packed bf16 weights, which is oneDNN's BA16a64b2a for the
// logical {K, N} weights tensor: for each block of 64 output columns, for each
// pair of k, 64 columns x 2 k values. K is zero-padded to a multiple of 32 and
// N to a multiple of 64, so element (n, k) of the block lives at
//   (n / 64) * k_padded * 64 + (k / 2) * 128 + (n % 64) * 2 + k % 2.
inline constexpr int64_t kPackBlockN = 64;
inline constexpr int64_t kPackBlockK = 32;

// How MatMul splits bf16 rows (shared with the test and the benchmark): x is
// cut into pieces of at most kMaxPieceRows rows; a piece of up to
// kSmallMMaxRows rows runs on the kernel below when the CPU has AVX512_BF16,
// a larger one on oneDNN. See matmul.cc for how both were chosen.
inline constexpr int64_t kSmallMMaxRows = 16;
inline constexpr int64_t kMaxPieceRows = 256;

// y[i, 0:n) = (accumulate ? y[i, 0:n) : 0) + x[i, 0:k) · W^T for i in [0, m).
// x holds bf16 bit patterns, row-major with leading dimension ldx; w is the
// packed layout above. Runs on the OpenMP threads, split over column blocks.
// Only call when the CPU has AVX512_BF16: this file is compiled for it.
void SmallMBf16MatMul(const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t n,
                      int64_t k, float* y, int64_t ldy, bool accumulate);

// out[j] = bf16(x[j]) for j < k, rounding to nearest even. Like the dot
// products, the conversion instruction treats denormals as zero. Same CPU
// requirement as above.
void ConvertRowToBf16(const float* x, int64_t k, uint16_t* out);

}  // namespace matformer::kernels_internal

#endif  // MATFORMER_CORE_KERNELS_SMALL_M_BF16_H_
