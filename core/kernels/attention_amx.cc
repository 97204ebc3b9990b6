// Paged attention on AMX tiles for a bf16 KV pool (attention.h says what it
// computes). A bf16 pool's tiles are already in the layout AMX multiplies:
// keys [head_dim / 2][key_stride][2] are the B operand of queries · keys^T
// (16 dimension pairs x 16 slots per tile), values
// [block_tokens / 2][value_stride][2] the B operand of weights · values (8
// slot pairs x 16 dimensions). So per span of 64 keys and chunk of 16 query
// rows the scores are 2 x 4 tile products (head_dim 64) and the weighted
// values 4 x 4, where the AVX-512 kernel spends ~16 k FMAs; the online
// softmax between them stays in f32 on AVX-512. Queries and softmax weights
// are rounded to bf16 for the products (as FlashAttention does on GPUs), so
// the result differs from the f32 kernels by about 2^-9 of the values.
//
// Compiled with AMX and AVX-512 flags; attention.cc calls it only when
// AmxEnabled() and PagedAttentionAmxRuns(pool).

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/kernels/amx.h"
#include "core/kernels/attention_kernel.h"
#include "core/kernels/avx512_math.h"

namespace matformer::kernels_internal {
namespace {

constexpr int kRows = 16;          // query rows per chunk: tile rows
constexpr int kGroupSlots = 16;    // keys per score tile
constexpr int kSpanGroups = 4;     // score tiles per span: 64 keys
constexpr int kSpanSlots = kGroupSlots * kSpanGroups;
constexpr int kDimBlock = 32;      // head dimensions per query tile
constexpr int kOutputTiles = 4;    // 16 output dimensions each: 64 per pass
constexpr int kPassDims = 16 * kOutputTiles;

// Tile registers (the _tile_* intrinsics paste the number into the
// instruction, so it is written out): 0-3 hold a span's scores, then a pass's
// weighted values; 4 = 16 rows x 32 bf16 query dimensions; 5 = 16 dimension
// pairs x 16 keys x 2; 6 = 16 rows x 16 bf16 weights (one key group);
// 7 = 8 slot pairs x 16 value dimensions x 2.
constexpr int kWeightTile = 6;
constexpr int kValueTile = 7;

// Query, score, weight and output tiles hold `rows` rows: a decode step's 4
// query heads need only 4 (attention_bench decode: 8.0-8.1 vs 8.3 ms).
AmxTileConfig AttentionTiles(int rows) {
  AmxTileConfig config = AmxTileConfig::Uniform(rows);
  config.rows[5] = kRows;
  config.bytes_per_row[kWeightTile] = kGroupSlots * sizeof(uint16_t);
  config.rows[kValueTile] = kGroupSlots / 2;
  return config;
}

struct QueryState {
  float max = -INFINITY;
  float sum = 0.0f;
};

// One 16-key group of a span: where its keys and values start in their tiles.
struct Group {
  const uint16_t* keys;
  const uint16_t* values;
};

// Adds one dimension block of queries (tile 4) times a key group's keys into
// score tile 0-3.
void ScoreGroup(int tile, const uint16_t* keys, int64_t key_stride_bytes) {
  _tile_loadd(5, keys, key_stride_bytes);
  switch (tile) {
    case 0: _tile_dpbf16ps(0, 4, 5); break;
    case 1: _tile_dpbf16ps(1, 4, 5); break;
    case 2: _tile_dpbf16ps(2, 4, 5); break;
    default: _tile_dpbf16ps(3, 4, 5); break;
  }
}

void StoreScores(int groups, float (*scores)[kSpanSlots]) {
  constexpr int64_t kStride = kSpanSlots * sizeof(float);
  _tile_stored(0, &scores[0][0], kStride);
  if (groups > 1) _tile_stored(1, &scores[0][16], kStride);
  if (groups > 2) _tile_stored(2, &scores[0][32], kStride);
  if (groups > 3) _tile_stored(3, &scores[0][48], kStride);
}

// The weighted values of one key group for 64 output dimensions (one pass)
// into tiles 0-3.
void AccumulateGroup(const uint16_t* weights, const uint16_t* values, int64_t value_stride_bytes) {
  _tile_loadd(6, weights, kSpanSlots * sizeof(uint16_t));
  _tile_loadd(7, values, value_stride_bytes);
  _tile_dpbf16ps(0, 6, 7);
  _tile_loadd(7, values + 32, value_stride_bytes);
  _tile_dpbf16ps(1, 6, 7);
  _tile_loadd(7, values + 64, value_stride_bytes);
  _tile_dpbf16ps(2, 6, 7);
  _tile_loadd(7, values + 96, value_stride_bytes);
  _tile_dpbf16ps(3, 6, 7);
}

}  // namespace

bool PagedAttentionAmxRuns(const KvPool& pool) {
  return pool.dtype() == KvDtype::kBF16 && pool.head_dim() % kPassDims == 0 &&
         pool.block_tokens() % kGroupSlots == 0;
}

void PagedAttentionAmx(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                       const AttentionQueries& queries, float scale, int64_t window) {
  using V = Avx512;
  const int head_dim = pool.head_dim(), block_tokens = pool.block_tokens();
  const int64_t key_stride = pool.key_stride(), value_stride = pool.value_stride();
  const int heads = queries.heads;
  const int64_t count = queries.tokens * heads;  // query row = token * heads + head
  const int64_t chunks = (count + kRows - 1) / kRows;
  auto first_visible = [&](int64_t position) { return window > 0 ? std::max<int64_t>(0, position - window + 1) : 0; };

  // bf16 copies of the scaled queries (whole chunks, padding rows zero), the
  // softmax states and the f32 accumulators, per thread and reused.
  thread_local std::vector<uint16_t> query_bf16;
  thread_local std::vector<float> acc;
  thread_local std::vector<QueryState> states;
  query_bf16.assign(chunks * kRows * head_dim, 0);
  for (int64_t i = 0; i < count; ++i) {
    const float* q = queries.q + (i / heads) * queries.row_stride + (i % heads) * head_dim;
    uint16_t* row = query_bf16.data() + i * head_dim;
    for (int j = 0; j < head_dim; j += 16) {
      const __m256bh packed = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(q + j), _mm512_set1_ps(scale)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + j), reinterpret_cast<__m256i>(packed));
    }
  }
  acc.assign(count * head_dim, 0.0f);
  states.assign(count, QueryState{});

  alignas(64) float scores[kRows][kSpanSlots];
  alignas(64) uint16_t weights[kRows][kSpanSlots];
  alignas(64) float values_out[kRows][kPassDims];
  float rescale[kRows];

  const AmxTileConfig config = AttentionTiles(static_cast<int>(std::min<int64_t>(kRows, count)));
  _tile_loadconfig(&config);
  const int64_t key_stride_bytes = key_stride * 2 * sizeof(uint16_t);
  const int64_t value_stride_bytes = value_stride * 2 * sizeof(uint16_t);
  const int64_t query_stride_bytes = int64_t{head_dim} * sizeof(uint16_t);
  const int64_t tiles_bytes = pool.key_tile_bytes() + pool.value_tile_bytes();
  const int groups_per_block = block_tokens / kGroupSlots;

  const int64_t last_position = queries.first_position + queries.tokens - 1;
  const int64_t first_group = first_visible(queries.first_position) / kGroupSlots;
  const int64_t last_group = last_position / kGroupSlots;
  Group groups[kSpanGroups];
  for (int64_t span_first = first_group; span_first <= last_group; span_first += kSpanGroups) {
    const int span_groups = static_cast<int>(std::min<int64_t>(kSpanGroups, last_group + 1 - span_first));
    for (int g = 0; g < span_groups; ++g) {
      const int64_t group = span_first + g;
      const int32_t block = blocks[group / groups_per_block];
      const int64_t slot = group % groups_per_block * kGroupSlots;
      groups[g] = {pool.KeyTile<uint16_t>(block, pool_layer, kv_head) + slot * 2,
                   pool.ValueTile<uint16_t>(block, pool_layer, kv_head) + slot / 2 * value_stride * 2};
    }
    // The next span's tiles stream in while this one is computed.
    for (int64_t g = span_first + kSpanGroups; g < span_first + 2 * kSpanGroups && g <= last_group;
         g += groups_per_block) {
      PrefetchBytes(pool.KeyTile<uint16_t>(blocks[g / groups_per_block], pool_layer, kv_head), tiles_bytes);
    }
    const int64_t span_begin = span_first * kGroupSlots;
    const int64_t span_end = (span_first + span_groups) * kGroupSlots;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, count - chunk * kRows));
      const int64_t first_row_position = queries.first_position + chunk * kRows / heads;
      const int64_t last_row_position = queries.first_position + (chunk * kRows + rows - 1) / heads;
      if (last_row_position < span_begin || first_visible(first_row_position) >= span_end) continue;

      ZeroAccumulators();
      for (int d = 0; d < head_dim; d += kDimBlock) {
        _tile_loadd(4, query_bf16.data() + (chunk * kRows) * head_dim + d, query_stride_bytes);
        const int64_t pair_row = d / 2 * key_stride * 2;  // d / 2 pair rows in, in elements
        for (int g = 0; g < span_groups; ++g) ScoreGroup(g, groups[g].keys + pair_row, key_stride_bytes);
      }
      StoreScores(span_groups, scores);

      // Online softmax per row, in f32; weights to bf16 for the values' product.
      for (int r = 0; r < kRows; ++r) {
        if (r >= rows) {
          std::memset(weights[r], 0, sizeof(weights[r]));
          continue;
        }
        QueryState& state = states[chunk * kRows + r];
        const int64_t position = queries.first_position + (chunk * kRows + r) / heads;
        const int64_t lo = first_visible(position), hi = position + 1;
        // v's lanes where group g's keys are visible to the row, else `otherwise`.
        auto visible = [&](int g, __m512 v, float otherwise) {
          const int64_t start = span_begin + g * kGroupSlots;
          return V::KeepInRange(v, 0, static_cast<int>(std::clamp<int64_t>(lo - start, 0, kGroupSlots)),
                                static_cast<int>(std::clamp<int64_t>(hi - start, 0, kGroupSlots)), otherwise);
        };
        __m512 span_max = V::Set1(-INFINITY);
        for (int g = 0; g < span_groups; ++g) {
          span_max = V::Max(span_max, visible(g, V::Load(&scores[r][g * kGroupSlots]), -INFINITY));
        }
        const float new_max = std::max(state.max, V::ReduceMax(span_max));
        rescale[r] = 1.0f;
        if (new_max == -INFINITY) {  // sees nothing yet
          std::memset(weights[r], 0, sizeof(weights[r]));
          continue;
        }
        __m512 span_sum = V::Zero();
        for (int g = 0; g < span_groups; ++g) {
          const __m512 weight = visible(g, V::Exp(V::Sub(V::Load(&scores[r][g * kGroupSlots]), V::Set1(new_max))), 0.0f);
          span_sum = V::Add(span_sum, weight);
          _mm256_store_si256(reinterpret_cast<__m256i*>(&weights[r][g * kGroupSlots]),
                             reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(weight)));
        }
        rescale[r] = V::First(V::Exp(V::Set1(state.max - new_max)));
        state.sum = state.sum * rescale[r] + V::ReduceSum(span_sum);
        state.max = new_max;
      }

      for (int pass = 0; pass < head_dim; pass += kPassDims) {
        ZeroAccumulators();
        for (int g = 0; g < span_groups; ++g) {
          AccumulateGroup(&weights[0][g * kGroupSlots], groups[g].values + pass * 2, value_stride_bytes);
        }
        StoreAccumulators(&values_out[0][0], kPassDims * sizeof(float));
        for (int r = 0; r < rows; ++r) {
          float* row = acc.data() + (chunk * kRows + r) * head_dim + pass;
          const __m512 factor = V::Set1(rescale[r]);
          for (int j = 0; j < kPassDims; j += 16) {
            V::Store(row + j, V::Fmadd(V::Load(row + j), factor, V::Load(&values_out[r][j])));
          }
        }
      }
    }
  }
  _tile_release();
  for (int64_t i = 0; i < count; ++i) {
    float* out = queries.out + (i / heads) * queries.row_stride + (i % heads) * head_dim;
    const float inverse = 1.0f / states[i].sum;
    for (int j = 0; j < head_dim; ++j) out[j] = acc[i * head_dim + j] * inverse;
  }
}

}  // namespace matformer::kernels_internal
