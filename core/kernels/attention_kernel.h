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

// The kernel over the vector type V: V::Vec holds V::kLanes floats; V has
// Zero, Set1, Load, Store, LoadBf16 (kLanes bf16 widened), Broadcast (from
// memory), Fmadd, Mul, Add, Sub, Max, Exp, ReduceMax, ReduceSum, First (lane
// 0) and KeepInRange(v, slot, lo, hi, otherwise): lane i of v where slot + i
// is in [lo, hi), else `otherwise`.
template <typename V>
struct PagedAttentionKernel {
  using Vec = typename V::Vec;
  static constexpr int kLanes = V::kLanes;
  // Queries scored together against one 16-slot group of keys (4 queries x
  // 16 / kLanes vectors of scores, plus the keys and a broadcast, stay in
  // registers even with AVX2's 16).
  static constexpr int kChunkQueries = 4;
  static constexpr int kGroupSlots = 16;
  static constexpr int kGroupVectors = kGroupSlots / kLanes;
  // Vectors of the head dimension accumulated in registers per pass over a block's values.
  static constexpr int kValueVectors = 8;
  static_assert(KvPool::kKeySlotMultiple % kGroupSlots == 0 && KvPool::kValueDimMultiple % kLanes == 0,
                "the pool's strides must be whole vectors");

  // The running state of one query's online softmax.
  struct QueryState {
    float max = -INFINITY;
    float sum = 0.0f;
  };

  // A bf16 tile as f32 (exact: a shift), `count` a multiple of kLanes. Once
  // per block, so that the 4 queries of a chunk do not each widen the same values.
  static void Widen(const uint16_t* in, int64_t count, float* out) {
    for (int64_t i = 0; i < count; i += kLanes) V::Store(out + i, V::LoadBf16(in + i));
  }

  // scores[q][0, 16) = queries[q] · keys[:, 0, 16) for Q queries of head_dim
  // (rows query_stride apart); keys is a key tile (rows key_stride apart) at
  // the group's first slot.
  template <int Q>
  static void ScoreGroup(const float* queries, int64_t query_stride, const float* keys, int64_t key_stride,
                         int head_dim, float* scores, int64_t score_stride) {
    Vec sums[Q][kGroupVectors];
    for (int q = 0; q < Q; ++q) {
      for (int g = 0; g < kGroupVectors; ++g) sums[q][g] = V::Zero();
    }
    for (int j = 0; j < head_dim; ++j) {
      Vec k[kGroupVectors];
      for (int g = 0; g < kGroupVectors; ++g) k[g] = V::Load(keys + j * key_stride + g * kLanes);
      for (int q = 0; q < Q; ++q) {
        const Vec qj = V::Broadcast(queries + q * query_stride + j);
        for (int g = 0; g < kGroupVectors; ++g) sums[q][g] = V::Fmadd(qj, k[g], sums[q][g]);
      }
    }
    for (int q = 0; q < Q; ++q) {
      for (int g = 0; g < kGroupVectors; ++g) V::Store(scores + q * score_stride + g * kLanes, sums[q][g]);
    }
  }

  static void ScoreBlock(int queries_in_chunk, const float* queries, int64_t query_stride, const float* key_tile,
                         int key_stride, int head_dim, float* scores) {
    for (int slot = 0; slot < key_stride; slot += kGroupSlots) {
      const float* keys = key_tile + slot;
      float* out = scores + slot;
      switch (queries_in_chunk) {
        case 1: ScoreGroup<1>(queries, query_stride, keys, key_stride, head_dim, out, key_stride); break;
        case 2: ScoreGroup<2>(queries, query_stride, keys, key_stride, head_dim, out, key_stride); break;
        case 3: ScoreGroup<3>(queries, query_stride, keys, key_stride, head_dim, out, key_stride); break;
        default: ScoreGroup<4>(queries, query_stride, keys, key_stride, head_dim, out, key_stride); break;
      }
    }
  }

  // acc[0, N lanes) = acc * rescale + sum over slots [lo, hi) of weights[slot] * values[slot][0, N lanes).
  template <int N>
  static void AccumulateValues(const float* weights, int lo, int hi, const float* values, int64_t value_stride,
                               float rescale, float* acc) {
    Vec sums[N];
    const Vec scale = V::Set1(rescale);
    for (int n = 0; n < N; ++n) sums[n] = V::Mul(V::Load(acc + n * kLanes), scale);
    for (int slot = lo; slot < hi; ++slot) {
      const Vec weight = V::Broadcast(weights + slot);
      const float* value = values + slot * value_stride;
      for (int n = 0; n < N; ++n) sums[n] = V::Fmadd(weight, V::Load(value + n * kLanes), sums[n]);
    }
    for (int n = 0; n < N; ++n) V::Store(acc + n * kLanes, sums[n]);
  }

  // Folds one block into a query's state: scores[lo, hi) are its visible
  // scores (overwritten by their weights), values the block's value tile.
  static void FoldBlock(float* scores, int lo, int hi, const float* values, int value_stride, QueryState& state,
                        float* acc) {
    const int first = lo / kLanes * kLanes;
    Vec block_max = V::Set1(-INFINITY);
    for (int slot = first; slot < hi; slot += kLanes) {
      block_max = V::Max(block_max, V::KeepInRange(V::Load(scores + slot), slot, lo, hi, -INFINITY));
    }
    const float new_max = std::max(state.max, V::ReduceMax(block_max));
    // exp(-inf) would be 0; Exp's clamp makes it 1.6e-38, which multiplies a zero accumulator.
    const float rescale = V::First(V::Exp(V::Set1(state.max - new_max)));
    Vec block_sum = V::Zero();
    for (int slot = first; slot < hi; slot += kLanes) {
      const Vec weight =
          V::KeepInRange(V::Exp(V::Sub(V::Load(scores + slot), V::Set1(new_max))), slot, lo, hi, 0.0f);
      V::Store(scores + slot, weight);
      block_sum = V::Add(block_sum, weight);
    }
    state.sum = state.sum * rescale + V::ReduceSum(block_sum);
    state.max = new_max;
    for (int d = 0; d < value_stride; d += kValueVectors * kLanes) {
      switch (std::min(kValueVectors, (value_stride - d) / kLanes)) {
        case 1: AccumulateValues<1>(scores, lo, hi, values + d, value_stride, rescale, acc + d); break;
        case 2: AccumulateValues<2>(scores, lo, hi, values + d, value_stride, rescale, acc + d); break;
        case 3: AccumulateValues<3>(scores, lo, hi, values + d, value_stride, rescale, acc + d); break;
        case 4: AccumulateValues<4>(scores, lo, hi, values + d, value_stride, rescale, acc + d); break;
        case 5: AccumulateValues<5>(scores, lo, hi, values + d, value_stride, rescale, acc + d); break;
        case 6: AccumulateValues<6>(scores, lo, hi, values + d, value_stride, rescale, acc + d); break;
        case 7: AccumulateValues<7>(scores, lo, hi, values + d, value_stride, rescale, acc + d); break;
        default: AccumulateValues<8>(scores, lo, hi, values + d, value_stride, rescale, acc + d); break;
      }
    }
  }

  static void Prefetch(const void* begin, int64_t bytes) {
    for (int64_t offset = 0; offset < bytes; offset += 64) {
      _mm_prefetch(static_cast<const char*>(begin) + offset, _MM_HINT_T0);
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
    scores.resize(static_cast<size_t>(kChunkQueries) * key_stride);
    acc.assign(count * value_stride, 0.0f);
    states.assign(count, QueryState{});

    const int64_t last_position = queries.first_position + queries.tokens - 1;
    const int64_t first_block = first_visible(queries.first_position) / block_tokens;
    const int64_t last_block = last_position / block_tokens;
    const int64_t tiles_bytes = pool.key_tile_bytes() + pool.value_tile_bytes();
    const int64_t key_tile_elements = int64_t{head_dim} * key_stride;
    const int64_t value_tile_elements = int64_t{block_tokens} * value_stride;
    thread_local std::vector<float> widened;  // a bf16 block's tiles in f32
    if constexpr (!std::is_same_v<T, float>) widened.resize(key_tile_elements + value_tile_elements);
    for (int64_t b = first_block; b <= last_block; ++b) {
      // Blocks are scattered over the pool: ask for the next block's tiles (one
      // contiguous run) while this one is computed.
      if (b < last_block) Prefetch(pool.KeyTile<T>(blocks[b + 1], pool_layer, kv_head), tiles_bytes);
      const float* key_tile;
      const float* value_tile;
      if constexpr (std::is_same_v<T, float>) {
        key_tile = pool.KeyTile<float>(blocks[b], pool_layer, kv_head);
        value_tile = pool.ValueTile<float>(blocks[b], pool_layer, kv_head);
      } else {
        Widen(pool.KeyTile<T>(blocks[b], pool_layer, kv_head), key_tile_elements, widened.data());
        Widen(pool.ValueTile<T>(blocks[b], pool_layer, kv_head), value_tile_elements,
              widened.data() + key_tile_elements);
        key_tile = widened.data();
        value_tile = widened.data() + key_tile_elements;
      }
      const int64_t block_start = b * block_tokens;
      for (int64_t chunk = 0; chunk < count; chunk += kChunkQueries) {
        const int in_chunk = static_cast<int>(std::min<int64_t>(kChunkQueries, count - chunk));
        // Slots [lo, hi) of this block that each query of the chunk sees.
        int lo[kChunkQueries], hi[kChunkQueries];
        bool any = false;
        for (int q = 0; q < in_chunk; ++q) {
          const int64_t position = queries.first_position + (chunk + q) / heads;
          lo[q] = static_cast<int>(std::max<int64_t>(first_visible(position) - block_start, 0));
          hi[q] = static_cast<int>(std::min<int64_t>(position + 1 - block_start, block_tokens));
          any = any || hi[q] > lo[q];
        }
        if (!any) continue;
        ScoreBlock(in_chunk, scaled.data() + chunk * head_dim, head_dim, key_tile, key_stride, head_dim, scores.data());
        for (int q = 0; q < in_chunk; ++q) {
          if (hi[q] <= lo[q]) continue;
          FoldBlock(scores.data() + q * key_stride, lo[q], hi[q], value_tile, value_stride, states[chunk + q],
                    acc.data() + (chunk + q) * value_stride);
        }
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
    if (pool.dtype() == DType::kBF16) {
      RunOn<uint16_t>(pool, blocks, pool_layer, kv_head, queries, scale, window);
    } else {
      RunOn<float>(pool, blocks, pool_layer, kv_head, queries, scale, window);
    }
  }
};

}  // namespace matformer::kernels_internal

#endif  // MATFORMER_CORE_KERNELS_ATTENTION_KERNEL_H_
