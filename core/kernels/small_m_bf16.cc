#include "core/kernels/small_m_bf16.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/util/round_up.h"

namespace matformer::kernels_internal {
namespace {

// Rows per register tile: 6 rows x 4 zmm accumulators + 4 zmm of weights + 1
// broadcast fit in the 32 zmm registers.
constexpr int kTileRows = 6;
// With more than one row tile, the tiles take turns over chunks of this many k
// pairs (32 KiB of a column block), so the tiles after the first find the
// chunk in L1/L2. y holds the running sums between chunks. A single tile runs
// the whole of k at once.
constexpr int64_t kChunkPairs = 128;
// Software prefetch distance in k pairs for a single tile (4 KiB ahead). With
// several tiles the tiles prefetch the next chunk instead, so that DRAM keeps
// streaming while the later tiles compute on the current one (without it the
// hardware prefetcher idles during those tiles and 16 rows cost ~1.6x as much
// on a cold 2048x8192 matrix), each tile a share of its pairs (tile t of T
// the pairs t, t + T, ...), so that the prefetches are spread over the whole
// chunk: when every tile prefetched all of them, the first tile issued them
// in a burst and the rest only repeated them (16 rows, build/bench/matmul_bench
// 8192x1024 1024x4096 1024x1024, three A/B rounds: cold 298-412 vs 369-440 us,
// 205-235 vs 223-253, 55-59 vs 58-63; engine_bench XL 16 rows at 512 positions
// 18.3-19.5 vs 20.8-21.7 ms).
constexpr int64_t kSingleTilePrefetchPairs = 16;
// bf16 elements of one k pair of a column block: 64 columns x 2 k.
constexpr int64_t kPairStride = kPackBlockN * 2;

inline __m512bh AsBh(__m512i v) { return reinterpret_cast<__m512bh>(v); }

// Accumulates rows [0, R) of x against pairs [p_begin, p_end) of one column
// block into y, prefetching into L2 the weights `prefetch` elements ahead of
// pairs p_begin + share, then every `shares`-th pair (past the end of the
// buffer is harmless for a prefetch). With
// `odd_k` the single trailing k (index k - 1, paired with a zero-padded
// weight) is added too; it is loaded alone so that the next row's first
// element, which may be an Inf, never meets the zero weight.
template <int R>
void Tile(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t p_begin, int64_t p_end,
          bool odd_k, int64_t k, float* y, int64_t ldy, const __mmask16 (&mask)[4], bool load_y,
          int64_t prefetch, int64_t share, int64_t shares) {
  __m512 acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      acc[r][j] =
          load_y ? _mm512_maskz_loadu_ps(mask[j], y + r * ldy + 16 * j) : _mm512_setzero_ps();
    }
  }
  int64_t until_prefetch = share;
  for (int64_t p = p_begin; p < p_end; ++p) {
    const uint16_t* wp = w + p * kPairStride;
    // Integer arithmetic: the address may lie past the buffer.
    const auto* ahead = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(wp) +
                                                      prefetch * sizeof(uint16_t));
    if (until_prefetch-- == 0) {
#pragma GCC unroll 4
      for (int line = 0; line < 4; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T1);
      until_prefetch = shares - 1;
    }
    const __m512bh w0 = AsBh(_mm512_load_si512(wp));
    const __m512bh w1 = AsBh(_mm512_load_si512(wp + 32));
    const __m512bh w2 = AsBh(_mm512_load_si512(wp + 64));
    const __m512bh w3 = AsBh(_mm512_load_si512(wp + 96));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, x + r * ldx + 2 * p, sizeof(pair));
      const __m512bh b = AsBh(_mm512_set1_epi32(pair));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], b, w0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], b, w1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], b, w2);
      acc[r][3] = _mm512_dpbf16_ps(acc[r][3], b, w3);
    }
  }
  if (odd_k) {
    const uint16_t* wp = w + (k / 2) * kPairStride;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh b = AsBh(_mm512_set1_epi32(x[r * ldx + k - 1]));
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        acc[r][j] = _mm512_dpbf16_ps(acc[r][j], b, AsBh(_mm512_load_si512(wp + 32 * j)));
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) _mm512_mask_storeu_ps(y + r * ldy + 16 * j, mask[j], acc[r][j]);
  }
}

void TileRows(int rows, const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t p_begin,
              int64_t p_end, bool odd_k, int64_t k, float* y, int64_t ldy,
              const __mmask16 (&mask)[4], bool load_y, int64_t prefetch, int64_t share,
              int64_t shares) {
  switch (rows) {
    case 1:
      return Tile<1>(x, ldx, w, p_begin, p_end, odd_k, k, y, ldy, mask, load_y, prefetch, share, shares);
    case 2:
      return Tile<2>(x, ldx, w, p_begin, p_end, odd_k, k, y, ldy, mask, load_y, prefetch, share, shares);
    case 3:
      return Tile<3>(x, ldx, w, p_begin, p_end, odd_k, k, y, ldy, mask, load_y, prefetch, share, shares);
    case 4:
      return Tile<4>(x, ldx, w, p_begin, p_end, odd_k, k, y, ldy, mask, load_y, prefetch, share, shares);
    case 5:
      return Tile<5>(x, ldx, w, p_begin, p_end, odd_k, k, y, ldy, mask, load_y, prefetch, share, shares);
    default:
      return Tile<6>(x, ldx, w, p_begin, p_end, odd_k, k, y, ldy, mask, load_y, prefetch, share, shares);
  }
}

}  // namespace

void SmallMBf16MatMul(const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t n,
                      int64_t k, float* y, int64_t ldy, bool accumulate) {
  const int64_t k_padded = RoundUp(k, kPackBlockK);
  const int64_t n_blocks = (n + kPackBlockN - 1) / kPackBlockN;
  const int64_t full_pairs = k / 2;
  const int64_t total_pairs = (k + 1) / 2;
  const int64_t chunk_pairs = m <= kTileRows ? total_pairs : kChunkPairs;
  const int64_t prefetch = (m <= kTileRows ? kSingleTilePrefetchPairs : chunk_pairs) * kPairStride;
  const int64_t tiles = (m + kTileRows - 1) / kTileRows;
  // Static: consecutive blocks are adjacent in memory, so each thread reads one
  // sequential stream.
#pragma omp parallel for schedule(static)
  for (int64_t nb = 0; nb < n_blocks; ++nb) {
    const uint16_t* wb = w + nb * k_padded * kPackBlockN;
    const int64_t valid = std::min(kPackBlockN, n - nb * kPackBlockN);
    __mmask16 mask[4];
    ColumnMasks(valid, mask);
    float* yb = y + nb * kPackBlockN;
    for (int64_t p0 = 0; p0 < total_pairs; p0 += chunk_pairs) {
      const bool last_chunk = p0 + chunk_pairs >= total_pairs;
      const int64_t p1 = std::min(p0 + chunk_pairs, full_pairs);
      const bool odd_k = last_chunk && (k % 2 != 0);
      const bool load_y = accumulate || p0 > 0;
      for (int64_t i = 0; i < m; i += kTileRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - i));
        TileRows(rows, x + i * ldx, ldx, wb, p0, p1, odd_k, k, yb + i * ldy, ldy, mask, load_y,
                 prefetch, i / kTileRows, tiles);
      }
    }
  }
}

void ConvertRowToBf16(const float* x, int64_t k, uint16_t* out) {
  int64_t j = 0;
  for (; j + 32 <= k; j += 32) {
    const __m512bh packed =
        _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + j + 16), _mm512_loadu_ps(x + j));
    _mm512_storeu_si512(out + j, reinterpret_cast<__m512i>(packed));
  }
  for (; j < k; j += 16) {
    const __mmask16 mask =
        static_cast<__mmask16>((uint32_t{1} << std::min<int64_t>(16, k - j)) - 1);
    const __m256bh packed = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + j));
    _mm256_mask_storeu_epi16(out + j, mask, reinterpret_cast<__m256i>(packed));
  }
}

}  // namespace matformer::kernels_internal
