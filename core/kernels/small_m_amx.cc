#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/kernels/amx.h"
#include "core/kernels/small_m_bf16.h"
#include "core/util/round_up.h"

namespace matformer::kernels_internal {
namespace {

// Every tile is 16 rows of 64 bytes: C = 16 rows of y x 16 f32 columns,
// A = 16 rows of x x 32 bf16 (one k block), B = 16 k pairs x 16 columns x 2.
constexpr int kTileRows = 16;
// Tile registers: C for the four 16-column groups of a 64-column block, one A,
// and B tiles used in turn.
constexpr int kAccumulators = 4;

bool CpuHasAmxBf16() {
  if (!__builtin_cpu_supports("avx512bf16")) return false;
  unsigned eax, ebx, ecx, edx;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  constexpr unsigned kAmxBf16 = 1u << 22;
  constexpr unsigned kAmxTile = 1u << 24;
  if ((edx & (kAmxBf16 | kAmxTile)) != (kAmxBf16 | kAmxTile)) return false;
  // The OS must save the tile state (XCR0 bits 17 and 18)...
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0 || (ecx & bit_OSXSAVE) == 0) return false;
  constexpr unsigned kTileState = 3u << 17;
  if ((_xgetbv(0) & kTileState) != kTileState) return false;
  // ...and Linux hands the 8 KiB of tile data to a process only on request
  // (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); without it the
  // first tile instruction is a SIGILL.
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtileData = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtileData) == 0;
}

// One 64-column block of w against one 16-row chunk of x: the four C tiles
// run over the whole of k, then are added into (or stored to) y's valid rows
// and columns.
void Block(const uint16_t* x, int64_t ldx, const uint16_t* wb, int64_t k_blocks, int rows,
           const __mmask16 (&mask)[4], float* y, int64_t ldy, bool accumulate) {
  ZeroAccumulators();
  const int64_t x_stride = ldx * static_cast<int64_t>(sizeof(uint16_t));
  constexpr int64_t kWeightStride = kPackBlockN * 2 * sizeof(uint16_t);
  for (int64_t kb = 0; kb < k_blocks; ++kb) {
    _tile_loadd(4, x + kb * kPackBlockK, x_stride);
    // 16 k pairs of the block, 4 KiB: column group j starts 32 elements in.
    const uint16_t* wk = wb + kb * kPackBlockK * kPackBlockN;
    _tile_loadd(5, wk, kWeightStride);
    _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(6, wk + 32, kWeightStride);
    _tile_dpbf16ps(1, 4, 6);
    _tile_loadd(7, wk + 64, kWeightStride);
    _tile_dpbf16ps(2, 4, 7);
    _tile_loadd(5, wk + 96, kWeightStride);
    _tile_dpbf16ps(3, 4, 5);
  }
  alignas(64) float out[kTileRows][kPackBlockN];
  StoreAccumulators(&out[0][0], kPackBlockN * sizeof(float));
  for (int r = 0; r < rows; ++r) {
    float* yr = y + r * ldy;
#pragma GCC unroll 4
    for (int j = 0; j < kAccumulators; ++j) {
      __m512 sum = _mm512_load_ps(&out[r][16 * j]);
      if (accumulate) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask[j], yr + 16 * j));
      _mm512_mask_storeu_ps(yr + 16 * j, mask[j], sum);
    }
  }
}

}  // namespace

bool AmxEnabled() {
  static const bool enabled = [] {
    const char* disable = std::getenv("MATFORMER_DISABLE_AMX");
    if (disable != nullptr && *disable != '\0' && std::strcmp(disable, "0") != 0) return false;
    return CpuHasAmxBf16();
  }();
  return enabled;
}

void AmxBf16MatMul(const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t n,
                   int64_t k, float* y, int64_t ldy, bool accumulate) {
  const int64_t k_padded = RoundUp(k, kPackBlockK);
  const int64_t k_blocks = k_padded / kPackBlockK;
  const int64_t n_blocks = (n + kPackBlockN - 1) / kPackBlockN;
  const AmxTileConfig config = AmxTileConfig::Uniform(kTileRows);
#pragma omp parallel
  {
    // Tile configuration is per thread; release it so that a context switch
    // does not save and restore 8 KiB of tiles the thread no longer uses.
    _tile_loadconfig(&config);
    // Static: consecutive blocks are adjacent in memory, so each thread reads
    // one sequential stream. The 16-row chunks after the first read the
    // block's weights again from L2 (k x 128 bytes: 512 KiB at k = 4096).
#pragma omp for schedule(static)
    for (int64_t nb = 0; nb < n_blocks; ++nb) {
      const uint16_t* wb = w + nb * k_padded * kPackBlockN;
      const int64_t valid = std::min(kPackBlockN, n - nb * kPackBlockN);
      __mmask16 mask[kAccumulators];
      ColumnMasks(valid, mask);
      for (int64_t i = 0; i < m; i += kTileRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - i));
        Block(x + i * ldx, ldx, wb, k_blocks, rows, mask, y + i * ldy + nb * kPackBlockN, ldy,
              accumulate);
      }
    }
    _tile_release();
  }
}

}  // namespace matformer::kernels_internal
