#ifndef MATFORMER_CORE_KERNELS_SMALL_M_BF16_H_
#define MATFORMER_CORE_KERNELS_SMALL_M_BF16_H_

// Internal to core/kernels: the bf16 matmul for up to a few dozen rows (decode
// batches), reading the same packed weights as oneDNN. oneDNN 2.6 needs a
// primitive per row count for its fast kernel and overlaps the weight stream
// with compute less well at these sizes.

#include <algorithm>
#include <cstdint>

namespace matformer::kernels_internal {

// Blocking of the packed bf16 weights, which is oneDNN's BA16a64b2a for the
// logical {K, N} weights tensor: for each block of 64 output columns, for each
// pair of k, 64 columns x 2 k values. K is zero-padded to a multiple of 32 and
// N to a multiple of 64, so element (n, k) of the block lives at
//   (n / 64) * k_padded * 64 + (k / 2) * 128 + (n % 64) * 2 + k % 2.
inline constexpr int64_t kPackBlockN = 64;
inline constexpr int64_t kPackBlockK = 32;

// The lane masks (bit c: column 16 j + c) of the first `valid` of a column
// block's 64 columns, in four 16-column groups j.
inline void ColumnMasks(int64_t valid, uint16_t (&mask)[4]) {
  for (int j = 0; j < 4; ++j) {
    const int64_t cols = std::clamp<int64_t>(valid - 16 * j, 0, 16);
    mask[j] = static_cast<uint16_t>((uint32_t{1} << cols) - 1);
  }
}

// How MatMul splits bf16 rows (shared with the test and the benchmark): x is
// cut into pieces of at most kMaxPieceRows rows; a piece of up to
// kSmallMMaxRows rows runs on the kernel below when the CPU has AVX512_BF16,
// a larger one on oneDNN.
//
// The threshold comes from A/B runs on the 2-thread Zen machine with cold
// weights (bf16 2048x8192, 8192x2048, 4096x384, 384x1536): against oneDNN's
// brgemm on the same buffer the kernel is level at 1-4 rows (both stream at
// DRAM speed), 10-25% faster at 16-56 rows, and 2-6% faster at 64 rows, where
// both run near 90% of the matmul peak (2048x8192: 1 row 659 vs 723 us, 16 rows
// 782 vs 913 us, 32 rows 1263 vs 1459 us, 64 rows ~2350 vs ~2450 us). From 128
// rows on oneDNN reaches 93-96% and takes the larger pieces.
inline constexpr int64_t kSmallMMaxRows = 64;
inline constexpr int64_t kMaxPieceRows = 256;
// With AMX, pieces of at least kAmxMinRows rows run on the AMX kernel
// instead, whatever their size. Measured on the 2-core AMX VM, cold weights
// (build/bench/matmul_bench 8192x1024 1024x4096 32000x1024, two rounds with
// and without MATFORMER_DISABLE_AMX=1): up to 3 rows the AVX-512 kernel
// streams as fast or faster (8192x1024: 1 row 532-587 vs 638-650 us, 2 rows
// 597 vs 668-674, 3 rows 620-629 vs 649-672), at 4 rows AMX is 10-15% faster
// (659-681 vs 758), at 16 rows twice as fast (650-672 vs 1389-1565), and at
// 128 and 512 rows it is level with oneDNN's brgemm or faster (1024x4096 at
// 512 rows: 2.9 vs 3.5 ms).
inline constexpr int64_t kAmxMinRows = 4;

// Which kernel MatMul runs a bf16 piece of `rows` rows on (also named in
// matmul_bench); AMX only when AmxEnabled() (amx.h).
enum class Bf16Kernel { kAmx, kAvx512, kOnednn };
Bf16Kernel ChooseBf16Kernel(int64_t rows);
const char* Bf16KernelName(Bf16Kernel kernel);

// y[i, 0:n) = (accumulate ? y[i, 0:n) : 0) + x[i, 0:k) · W^T for i in [0, m).
// x holds bf16 bit patterns, row-major with leading dimension ldx; w is the
// packed layout above. Runs on the OpenMP threads, split over column blocks.
// Only call when the CPU has AVX512_BF16: this file is compiled for it.
void SmallMBf16MatMul(const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t n,
                      int64_t k, float* y, int64_t ldy, bool accumulate);

// SmallMBf16MatMul on AMX tiles, 16 rows of x at a time. x must hold
// RoundUp(m, 16) rows and zeros in columns [k, RoundUp(k, 32)): the tiles read
// whole blocks. Only call when AmxEnabled() (amx.h).
void AmxBf16MatMul(const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t n,
                   int64_t k, float* y, int64_t ldy, bool accumulate);

// out[j] = bf16(x[j]) for j < k, rounding to nearest even. Like the dot
// products, the conversion instruction treats denormals as zero. Same CPU
// requirement as above.
void ConvertRowToBf16(const float* x, int64_t k, uint16_t* out);

}  // namespace matformer::kernels_internal

#endif  // MATFORMER_CORE_KERNELS_SMALL_M_BF16_H_
