#ifndef MATFORMER_CORE_KERNELS_ATTENTION_KERNEL_H_
#define MATFORMER_CORE_KERNELS_ATTENTION_KERNEL_H_

// Internal to core/kernels: the paged attention kernel, written once over a
// vector type `V` (avx2_math.h's Avx2, or Avx512 in attention_avx512.cc) and
// instantiated in a file compiled for that instruction set. attention.h says
// what it computes; attention.cc picks the instantiation the CPU runs.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "absl/types/span.h"
#include "core/kernels/attention.h"
#include "core/kv/kv_cache.h"

namespace matformer::kernels_internal {

// PagedAttention (attention.h) for one instruction set; attention.cc picks.
// The AVX-512 one needs AVX512F.
void PagedAttentionAvx2(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                        const AttentionQueries& queries, float scale, int64_t window);
void PagedAttentionAvx512(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                          const AttentionQueries& queries, float scale, int64_t window);
// On AMX tiles (attention_amx.cc), for the pools PagedAttentionAmxRuns accepts
// (bf16, head_dim a multiple of 64, block_tokens a multiple of 16); needs AmxEnabled().
bool PagedAttentionAmxRuns(const KvPool& pool);
void PagedAttentionAmx(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                       const AttentionQueries& queries, float scale, int64_t window);

// Asks for [begin, begin + bytes) in L1, a 64-byte line at a time.
inline void PrefetchBytes(const void* begin, int64_t bytes) {
  for (int64_t offset = 0; offset < bytes; offset += 64) {
    _mm_prefetch(static_cast<const char*>(begin) + offset, _MM_HINT_T0);
  }
}

// The kernel over the vector type V: V::Vec holds V::kLanes floats in one of
// V::kRegisters vector registers; V has Zero, Set1, Load, Store,
// LoadBf16Pair(p, even, odd) (2 x kLanes bf16 of a paired tile, KvPool,
// widened: the even elements and the odd ones), LoadInt8 (kLanes int8
// widened), Broadcast (from memory),
// Fmadd, Mul, Add, Sub, Max, Exp, ReduceMax, ReduceSum, First (lane 0) and
// KeepInRange(v, slot, lo, hi, otherwise): lane i of v where slot + i is in
// [lo, hi), else `otherwise`.
//
// The work is cut in chunks of 4 queries (the query heads of a KV group, and
// across tokens in prefill) and spans of up to 64 keys (whole blocks). Per
// (chunk, span): the 4 queries are scored against each 16-slot group of keys
// in registers (a key vector feeds 4 FMAs), one online-softmax update per
// query for the whole span (the reductions and the rescale, a latency chain,
// once per 64 keys rather than per block), then the span's values are
// accumulated for the 4 queries at once (a value vector feeds 4 FMAs).
// A bf16 or int8 pool is read as stored and widened in registers (widening
// each bf16 span to f32 once for all the chunks of a prefill was slower: 38
// vs 33 ms at 512 tokens, attention_bench). An int8 pool's scales multiply
// the 16 scores of a key group and, after the softmax update, the weights of
// the values.
template <typename V>
struct PagedAttentionKernel {
  using Vec = typename V::Vec;
  static constexpr int kLanes = V::kLanes;
  static constexpr int kChunkQueries = 4;
  static constexpr int kGroupSlots = 16;
  static constexpr int kGroupVectors = kGroupSlots / kLanes;
  // Value vectors accumulated per pass for all queries of a chunk: 4 x this
  // accumulators, this many values and a broadcast fit in the registers.
  static constexpr int kValueVectors = V::kRegisters >= 32 ? 4 : 2;
  static constexpr int kSpanSlots = 64;
  static_assert(KvPool::kKeySlotMultiple % kGroupSlots == 0 && KvPool::kValueDimMultiple % kLanes == 0,
                "the pool's strides must be whole vectors");

  // The running state of one query's online softmax.
  struct QueryState {
    float max = -INFINITY;
    float sum = 0.0f;
  };

  // The blocks of one span as the pool's tiles of T (f32, bf16 pairs or
  // int8) with an int8 pool's scales, and the slots [lo, hi) of each that
  // each query of the chunk sees; [first, last) is their union over the chunk.
  template <typename T>
  struct Span {
    int blocks = 0;
    std::vector<const T*> keys, values;
    std::vector<const float*> key_scales, value_scales;  // int8 only
    std::vector<int> lo, hi;  // [query * blocks + block]
    std::vector<int> first, last;
    // Tiles to fetch while block b is scored (decode), null or empty for none.
    std::vector<const void*> prefetch;
    int64_t prefetch_bytes = 0;
  };

  // Rows a tile of T interleaves (pairs in bf16: KvPool's class comment).
  template <typename T>
  static constexpr int kRowGroup = std::is_same_v<T, uint16_t> ? 2 : 1;
  // Whether tiles of T carry scales (int8).
  template <typename T>
  static constexpr bool kScaled = std::is_same_v<T, int8_t>;

  // The kLanes-wide slice of the kRowGroup<T> rows interleaved at p, widened.
  template <typename T>
  static void LoadGroup(const T* p, Vec (&rows)[kRowGroup<T>]) {
    if constexpr (std::is_same_v<T, float>) {
      rows[0] = V::Load(p);
    } else if constexpr (std::is_same_v<T, uint16_t>) {
      V::LoadBf16Pair(p, rows[0], rows[1]);
    } else {
      rows[0] = V::LoadInt8(p);
    }
  }

  // scores[q][0, 16) = queries[q] · keys[:, slot + [0, 16)) (times the keys'
  // scales in an int8 tile) for Q queries of head_dim (rows
  // query_stride apart) against a key tile. Even and odd j sum apart (two FMA
  // units of 4-cycle latency need 8 independent sums; a bf16 tile hands out
  // rows in pairs anyway).
  template <int Q, typename T>
  static void ScoreGroup(const float* queries, int64_t query_stride, const T* tile, const float* key_scales, int slot,
                         int64_t key_stride, int head_dim, float* scores, int64_t score_stride) {
    constexpr int R = kRowGroup<T>;
    Vec sums[2][Q][kGroupVectors];
    for (int h = 0; h < 2; ++h) {
      for (int q = 0; q < Q; ++q) {
        for (int g = 0; g < kGroupVectors; ++g) sums[h][q][g] = V::Zero();
      }
    }
    auto add_row = [&](int h, int j, const Vec (&k)[kGroupVectors]) {
      for (int q = 0; q < Q; ++q) {
        const Vec qj = V::Broadcast(queries + q * query_stride + j);
        for (int g = 0; g < kGroupVectors; ++g) sums[h][q][g] = V::Fmadd(qj, k[g], sums[h][q][g]);
      }
    };
    // Loads the R rows of the group at p: rows[r][g] is row r at slots slot + g * kLanes.
    auto load_group = [&](const T* p, Vec (*rows)[kGroupVectors]) {
      for (int g = 0; g < kGroupVectors; ++g) {
        Vec loaded[R];
        LoadGroup(p + g * kLanes * R, loaded);
        for (int r = 0; r < R; ++r) rows[r][g] = loaded[r];
      }
    };
    const T* group = tile + int64_t{slot} * R;  // the next group of rows
    const int64_t group_step = key_stride * R;
    const int pairs_end = head_dim / 2 * 2;
#pragma GCC unroll 4
    for (int j = 0; j < pairs_end; j += 2) {
      Vec rows[2][kGroupVectors];
      for (int r = 0; r < 2; r += R, group += group_step) load_group(group, rows + r);
      add_row(0, j, rows[0]);
      add_row(1, j + 1, rows[1]);
    }
    if (pairs_end < head_dim) {  // odd head_dim: the last row alone (a bf16 pair's odd half is padding)
      Vec rows[R][kGroupVectors];
      load_group(group, rows);
      add_row(0, pairs_end, rows[0]);
    }
    for (int q = 0; q < Q; ++q) {
      for (int g = 0; g < kGroupVectors; ++g) {
        Vec score = V::Add(sums[0][q][g], sums[1][q][g]);
        if constexpr (kScaled<T>) score = V::Mul(score, V::Load(key_scales + slot + g * kLanes));
        V::Store(scores + q * score_stride + g * kLanes, score);
      }
    }
  }

  // acc[q][0, N lanes) = acc[q] * rescale[q] + sum over the span's visible
  // slots of weights[q][slot] * values[slot][0, N lanes), for Q queries. A
  // bf16 tile gives its slots in pairs: an odd first or last slot brings its
  // neighbour, whose weight FoldSpan has set to 0 (same vector of scores).
  // An int8 tile's value scales are already in the weights (FoldSpan).
  template <int Q, int N, typename T>
  static void AccumulateValues(const Span<T>& span, int key_stride, int64_t value_stride, int64_t offset,
                               const float* weights, int64_t weight_stride, const float* rescale, float* acc) {
    Vec sums[Q][N];
    for (int q = 0; q < Q; ++q) {
      const Vec scale = V::Set1(rescale[q]);
      for (int n = 0; n < N; ++n) sums[q][n] = V::Mul(V::Load(acc + q * value_stride + n * kLanes), scale);
    }
    auto add_slot = [&](const float* slot_weights, const Vec (&value)[N]) {
      for (int q = 0; q < Q; ++q) {
        const Vec weight = V::Broadcast(slot_weights + q * weight_stride);
        for (int n = 0; n < N; ++n) sums[q][n] = V::Fmadd(weight, value[n], sums[q][n]);
      }
    };
    for (int b = 0; b < span.blocks; ++b) {
      const T* values = span.values[b];
      const float* block_weights = weights + b * key_stride;
      constexpr int R = kRowGroup<T>;
      for (int slot = span.first[b] / R * R; slot < span.last[b]; slot += R) {
        Vec rows[R][N];
        for (int n = 0; n < N; ++n) {
          Vec loaded[R];
          LoadGroup(values + (slot / R * value_stride + offset + n * kLanes) * R, loaded);
          for (int r = 0; r < R; ++r) rows[r][n] = loaded[r];
        }
        for (int r = 0; r < R; ++r) add_slot(block_weights + slot + r, rows[r]);
      }
    }
    for (int q = 0; q < Q; ++q) {
      for (int n = 0; n < N; ++n) V::Store(acc + q * value_stride + n * kLanes, sums[q][n]);
    }
  }

  template <int Q, typename T>
  static void AccumulateSpan(const Span<T>& span, int key_stride, int value_stride, const float* weights,
                             int64_t weight_stride, const float* rescale, float* acc) {
    for (int d = 0; d < value_stride; d += kValueVectors * kLanes) {
      const int n = std::min(kValueVectors, (value_stride - d) / kLanes);
      if (n == kValueVectors) {
        AccumulateValues<Q, kValueVectors>(span, key_stride, value_stride, d, weights, weight_stride, rescale, acc + d);
      } else if (n == 1) {
        AccumulateValues<Q, 1>(span, key_stride, value_stride, d, weights, weight_stride, rescale, acc + d);
      } else if (n == 2) {
        AccumulateValues<Q, 2>(span, key_stride, value_stride, d, weights, weight_stride, rescale, acc + d);
      } else {
        AccumulateValues<Q, 3>(span, key_stride, value_stride, d, weights, weight_stride, rescale, acc + d);
      }
    }
  }

  // One query's online-softmax update for a span: its visible scores (rows of
  // `scores`, blocks key_stride apart) become weights (times their values'
  // scales in an int8 span), invisible slots of the chunk's union 0; returns
  // the factor that rescales its accumulator.
  template <typename T>
  static float FoldSpan(const Span<T>& span, int q, int key_stride, float* scores, QueryState& state) {
    const int* lo = span.lo.data() + q * span.blocks;
    const int* hi = span.hi.data() + q * span.blocks;
    Vec span_max = V::Set1(-INFINITY);
    for (int b = 0; b < span.blocks; ++b) {
      for (int slot = lo[b] / kLanes * kLanes; slot < hi[b]; slot += kLanes) {
        const Vec visible = V::KeepInRange(V::Load(scores + b * key_stride + slot), slot, lo[b], hi[b], -INFINITY);
        span_max = V::Max(span_max, visible);
      }
    }
    const float new_max = std::max(state.max, V::ReduceMax(span_max));
    Vec span_sum = V::Zero();
    for (int b = 0; b < span.blocks; ++b) {
      for (int slot = span.first[b] / kLanes * kLanes; slot < span.last[b]; slot += kLanes) {
        float* s = scores + b * key_stride + slot;
        const Vec weight = V::KeepInRange(V::Exp(V::Sub(V::Load(s), V::Set1(new_max))), slot, lo[b], hi[b], 0.0f);
        span_sum = V::Add(span_sum, weight);
        if constexpr (kScaled<T>) {
          V::Store(s, V::Mul(weight, V::Load(span.value_scales[b] + slot)));
        } else {
          V::Store(s, weight);
        }
      }
    }
    if (new_max == -INFINITY) return 1.0f;  // sees nothing yet: its weights are all 0
    // exp(-inf) would be 0; Exp's clamp makes it 1.6e-38, which multiplies a zero accumulator.
    const float rescale = V::First(V::Exp(V::Set1(state.max - new_max)));
    state.sum = state.sum * rescale + V::ReduceSum(span_sum);
    state.max = new_max;
    return rescale;
  }

  // Scores, folds and accumulates one chunk of Q queries over a span.
  template <int Q, typename T>
  static void RunChunk(const Span<T>& span, const float* queries, int head_dim, int key_stride, int value_stride,
                       float* scores, QueryState* states, float* acc) {
    const int64_t score_stride = int64_t{span.blocks} * key_stride;
    for (int b = 0; b < span.blocks; ++b) {
      if (!span.prefetch.empty() && span.prefetch[b] != nullptr) PrefetchBytes(span.prefetch[b], span.prefetch_bytes);
      for (int slot = span.first[b] / kGroupSlots * kGroupSlots; slot < span.last[b]; slot += kGroupSlots) {
        ScoreGroup<Q>(queries, head_dim, span.keys[b], kScaled<T> ? span.key_scales[b] : nullptr, slot,
                      key_stride, head_dim, scores + b * key_stride + slot, score_stride);
      }
    }
    float rescale[Q];
    for (int q = 0; q < Q; ++q) rescale[q] = FoldSpan(span, q, key_stride, scores + q * score_stride, states[q]);
    AccumulateSpan<Q>(span, key_stride, value_stride, scores, score_stride, rescale, acc);
  }

  template <typename T>
  static void DispatchChunk(int queries_in_chunk, const Span<T>& span, const float* queries, int head_dim,
                            int key_stride, int value_stride, float* scores, QueryState* states, float* acc) {
    switch (queries_in_chunk) {
      case 1: RunChunk<1>(span, queries, head_dim, key_stride, value_stride, scores, states, acc); break;
      case 2: RunChunk<2>(span, queries, head_dim, key_stride, value_stride, scores, states, acc); break;
      case 3: RunChunk<3>(span, queries, head_dim, key_stride, value_stride, scores, states, acc); break;
      default: RunChunk<4>(span, queries, head_dim, key_stride, value_stride, scores, states, acc); break;
    }
  }

  // PagedAttention for a pool storing T.
  template <typename T>
  static void RunOn(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                    const AttentionQueries& queries, float scale, int64_t window) {
    const int head_dim = pool.head_dim(), block_tokens = pool.block_tokens();
    const int key_stride = pool.key_stride(), value_stride = pool.value_stride();
    const int heads = queries.heads;
    const int64_t count = queries.tokens * heads;  // query index = token * heads + head
    const int64_t chunks = (count + kChunkQueries - 1) / kChunkQueries;
    auto first_visible = [&](int64_t position) { return window > 0 ? std::max<int64_t>(0, position - window + 1) : 0; };

    // Scaled copies of the queries, the softmax states and the accumulators,
    // per thread and reused across calls.
    thread_local std::vector<float> scaled, scores, acc;
    thread_local std::vector<QueryState> states;
    scaled.resize(count * head_dim);
    for (int64_t i = 0; i < count; ++i) {
      const float* q = queries.q + (i / heads) * queries.row_stride + (i % heads) * head_dim;
      for (int j = 0; j < head_dim; ++j) scaled[i * head_dim + j] = q[j] * scale;
    }
    acc.assign(count * value_stride, 0.0f);
    states.assign(count, QueryState{});

    const int64_t last_position = queries.first_position + queries.tokens - 1;
    const int64_t first_block = first_visible(queries.first_position) / block_tokens;
    const int64_t last_block = last_position / block_tokens;
    const int span_blocks = std::max(1, kSpanSlots / block_tokens);
    scores.resize(static_cast<size_t>(kChunkQueries) * span_blocks * key_stride);
    const int64_t tiles_bytes = pool.key_tile_bytes() + pool.value_tile_bytes();
    thread_local Span<T> span;

    for (int64_t span_first = first_block; span_first <= last_block; span_first += span_blocks) {
      const int blocks_in_span = static_cast<int>(std::min<int64_t>(span_blocks, last_block + 1 - span_first));
      // Blocks may be scattered over the pool (KvPool keeps a sequence's ids
      // consecutive only where it can): the next span's tiles (a contiguous
      // run per block) are fetched while this span is computed, in decode one
      // block at a time as this span's blocks are scored (in one burst they
      // stalled the kernel: 16 x 512 positions took 6.3 ms, not 5.3).
      if (span_first == first_block) {
        for (int b = 0; b < blocks_in_span; ++b) {
          PrefetchBytes(pool.KeyTile<T>(blocks[span_first + b], pool_layer, kv_head), tiles_bytes);
        }
      }
      // Many chunks (prefill) compute long enough on a span to take the next one in a burst.
      const bool burst = chunks > 1;
      span.prefetch.assign(burst ? 0 : span_blocks, nullptr);
      span.prefetch_bytes = tiles_bytes;
      for (int b = 0; b < span_blocks && span_first + span_blocks + b <= last_block; ++b) {
        const void* next = pool.KeyTile<T>(blocks[span_first + span_blocks + b], pool_layer, kv_head);
        if (burst) {
          PrefetchBytes(next, tiles_bytes);
        } else {
          span.prefetch[b] = next;
        }
      }
      span.blocks = blocks_in_span;
      span.keys.resize(blocks_in_span);
      span.values.resize(blocks_in_span);
      span.key_scales.resize(kScaled<T> ? blocks_in_span : 0);
      span.value_scales.resize(kScaled<T> ? blocks_in_span : 0);
      for (int b = 0; b < blocks_in_span; ++b) {
        const int32_t block = blocks[span_first + b];
        span.keys[b] = pool.KeyTile<T>(block, pool_layer, kv_head);
        span.values[b] = pool.ValueTile<T>(block, pool_layer, kv_head);
        if constexpr (kScaled<T>) {
          span.key_scales[b] = pool.KeyScales(block, pool_layer, kv_head);
          span.value_scales[b] = pool.ValueScales(block, pool_layer, kv_head);
        }
      }
      for (int64_t chunk = 0; chunk < count; chunk += kChunkQueries) {
        const int in_chunk = static_cast<int>(std::min<int64_t>(kChunkQueries, count - chunk));
        span.lo.resize(in_chunk * blocks_in_span);
        span.hi.resize(in_chunk * blocks_in_span);
        span.first.assign(blocks_in_span, block_tokens);
        span.last.assign(blocks_in_span, 0);
        bool any = false;
        for (int q = 0; q < in_chunk; ++q) {
          const int64_t position = queries.first_position + (chunk + q) / heads;
          for (int b = 0; b < blocks_in_span; ++b) {
            const int64_t block_start = (span_first + b) * block_tokens;
            int lo = static_cast<int>(std::clamp<int64_t>(first_visible(position) - block_start, 0, block_tokens));
            int hi = static_cast<int>(std::clamp<int64_t>(position + 1 - block_start, 0, block_tokens));
            if (hi <= lo) lo = hi = 0;
            span.lo[q * blocks_in_span + b] = lo;
            span.hi[q * blocks_in_span + b] = hi;
            if (hi > lo) {
              span.first[b] = std::min(span.first[b], lo);
              span.last[b] = std::max(span.last[b], hi);
              any = true;
            }
          }
        }
        if (!any) continue;
        const float* chunk_queries = scaled.data() + chunk * head_dim;
        float* chunk_acc = acc.data() + chunk * value_stride;
        DispatchChunk(in_chunk, span, chunk_queries, head_dim, key_stride, value_stride, scores.data(),
                      &states[chunk], chunk_acc);
      }
    }
    for (int64_t i = 0; i < count; ++i) {
      float* out = queries.out + (i / heads) * queries.row_stride + (i % heads) * head_dim;
      const float inverse = 1.0f / states[i].sum;
      for (int j = 0; j < head_dim; ++j) out[j] = acc[i * value_stride + j] * inverse;
    }
  }

  static void Run(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                  const AttentionQueries& queries, float scale, int64_t window) {
    switch (pool.dtype()) {
      case KvDtype::kF32: RunOn<float>(pool, blocks, pool_layer, kv_head, queries, scale, window); break;
      case KvDtype::kBF16: RunOn<uint16_t>(pool, blocks, pool_layer, kv_head, queries, scale, window); break;
      case KvDtype::kInt8: RunOn<int8_t>(pool, blocks, pool_layer, kv_head, queries, scale, window); break;
    }
  }
};

}  // namespace matformer::kernels_internal

#endif  // MATFORMER_CORE_KERNELS_ATTENTION_KERNEL_H_
