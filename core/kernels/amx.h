#ifndef MATFORMER_CORE_KERNELS_AMX_H_
#define MATFORMER_CORE_KERNELS_AMX_H_

// Internal to core/kernels: what the AMX kernels (small_m_amx.cc,
// attention_amx.cc) share.

#include <immintrin.h>

#include <cstdint>

namespace matformer::kernels_internal {

// True when the CPU has AMX-BF16 and AVX512_BF16, Linux granted this process
// the tile state (asked once, on the first call), and MATFORMER_DISABLE_AMX is
// unset, empty or "0" in the environment (read once): the switch for A/B runs
// and for testing the other kernels on an AMX host.
bool AmxEnabled();

// LDTILECFG's 64-byte operand (palette 1): bytes per row and rows of each of
// the 8 tile registers.
struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};

  // Every register `rows` rows of 64 bytes (16 f32 or 32 bf16).
  static AmxTileConfig Uniform(int rows) {
    AmxTileConfig config;
    for (int t = 0; t < 8; ++t) {
      config.bytes_per_row[t] = 64;
      config.rows[t] = static_cast<uint8_t>(rows);
    }
    return config;
  }
};

// Only where the file is compiled for AMX (GCC and clang name the macro
// differently).
#if defined(__AMX_TILE__) || defined(__AMXTILE__)
// Both AMX kernels accumulate a 64-column block of f32 results in tiles 0-3,
// 16 columns each (the _tile_* intrinsics paste the register number into
// the instruction, so it is written out).
inline void ZeroAccumulators() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

// Tiles 0-3 side by side into rows of `out`, `row_bytes` apart.
inline void StoreAccumulators(float* out, int64_t row_bytes) {
  _tile_stored(0, out, row_bytes);
  _tile_stored(1, out + 16, row_bytes);
  _tile_stored(2, out + 32, row_bytes);
  _tile_stored(3, out + 48, row_bytes);
}
#endif

}  // namespace matformer::kernels_internal

#endif  // MATFORMER_CORE_KERNELS_AMX_H_
