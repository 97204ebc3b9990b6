#ifndef MATFORMER_CORE_KERNELS_AMX_H_
#define MATFORMER_CORE_KERNELS_AMX_H_

// Internal to core/kernels: what the AMX kernels (small_m_amx.cc,
// attention_amx.cc) share.

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
};

}  // namespace matformer::kernels_internal

#endif  // MATFORMER_CORE_KERNELS_AMX_H_
