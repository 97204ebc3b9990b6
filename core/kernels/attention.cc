#include "core/kernels/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/kernels/avx2_math.h"

namespace matformer {
namespace {

using kernels_internal::Exp8;
using kernels_internal::HorizontalMax;
using kernels_internal::HorizontalSum;
using kernels_internal::kLanes;

// Queries scored together against one 16-slot group of keys: 4 queries x 2
// vectors of scores + 2 vectors of keys + 1 broadcast stay in the 16 ymm registers.
constexpr int kChunkQueries = 4;
constexpr int kGroupSlots = 16;
// Vectors of the head dimension accumulated in registers per pass over a block's values.
constexpr int kValueVectors = 8;

// A bf16 tile as f32 (exact: a shift), `count` a multiple of 8. Once per
// block, so that the 4 queries of a chunk do not each widen the same values.
void Widen(const uint16_t* in, int64_t count, float* out) {
  for (int64_t i = 0; i < count; i += kLanes) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i)));
    _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
  }
}

// scores[q][0, 16) = queries[q] · keys[:, 0, 16) for Q queries of head_dim
// (rows query_stride apart); keys is a key tile (rows key_stride apart) at
// the group's first slot.
template <int Q>
void ScoreGroup(const float* queries, int64_t query_stride, const float* keys, int64_t key_stride, int head_dim,
                float* scores, int64_t score_stride) {
  __m256 sums[Q][2];
  for (int q = 0; q < Q; ++q) sums[q][0] = sums[q][1] = _mm256_setzero_ps();
  for (int j = 0; j < head_dim; ++j) {
    const __m256 k0 = _mm256_loadu_ps(keys + j * key_stride);
    const __m256 k1 = _mm256_loadu_ps(keys + j * key_stride + kLanes);
    for (int q = 0; q < Q; ++q) {
      const __m256 qj = _mm256_broadcast_ss(queries + q * query_stride + j);
      sums[q][0] = _mm256_fmadd_ps(qj, k0, sums[q][0]);
      sums[q][1] = _mm256_fmadd_ps(qj, k1, sums[q][1]);
    }
  }
  for (int q = 0; q < Q; ++q) {
    _mm256_storeu_ps(scores + q * score_stride, sums[q][0]);
    _mm256_storeu_ps(scores + q * score_stride + kLanes, sums[q][1]);
  }
}

void ScoreBlock(int queries_in_chunk, const float* queries, int64_t query_stride, const float* key_tile,
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

// acc[0, 8N) = acc * rescale + sum over slots [lo, hi) of weights[slot] * values[slot][0, 8N).
template <int N>
void AccumulateValues(const float* weights, int lo, int hi, const float* values, int64_t value_stride, float rescale,
                      float* acc) {
  __m256 sums[N];
  const __m256 scale = _mm256_set1_ps(rescale);
  for (int n = 0; n < N; ++n) sums[n] = _mm256_mul_ps(_mm256_loadu_ps(acc + n * kLanes), scale);
  for (int slot = lo; slot < hi; ++slot) {
    const __m256 weight = _mm256_broadcast_ss(weights + slot);
    const float* value = values + slot * value_stride;
    for (int n = 0; n < N; ++n) sums[n] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(value + n * kLanes), sums[n]);
  }
  for (int n = 0; n < N; ++n) _mm256_storeu_ps(acc + n * kLanes, sums[n]);
}

// The running state of one query's online softmax.
struct QueryState {
  float max = -INFINITY;
  float sum = 0.0f;
};

// Folds one block into a query's state: scores[lo, hi) are its visible
// scores (overwritten by their weights), values the block's value tile.
void FoldBlock(float* scores, int lo, int hi, const float* values, int value_stride, QueryState& state, float* acc) {
  const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 lo_v = _mm256_set1_ps(static_cast<float>(lo)), hi_v = _mm256_set1_ps(static_cast<float>(hi));
  const int first = lo / kLanes * kLanes;
  auto visible = [&](int slot) {
    const __m256 index = _mm256_add_ps(lane, _mm256_set1_ps(static_cast<float>(slot)));
    return _mm256_and_ps(_mm256_cmp_ps(index, lo_v, _CMP_GE_OQ), _mm256_cmp_ps(index, hi_v, _CMP_LT_OQ));
  };
  __m256 block_max = _mm256_set1_ps(-INFINITY);
  for (int slot = first; slot < hi; slot += kLanes) {
    block_max = _mm256_max_ps(block_max, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_loadu_ps(scores + slot),
                                                          visible(slot)));
  }
  const float new_max = std::max(state.max, HorizontalMax(block_max));
  // exp(-inf) would be 0; Exp8's clamp makes it 1.6e-38, which multiplies a zero accumulator.
  const float rescale = _mm256_cvtss_f32(Exp8(_mm256_set1_ps(state.max - new_max)));
  __m256 block_sum = _mm256_setzero_ps();
  for (int slot = first; slot < hi; slot += kLanes) {
    const __m256 weight = _mm256_and_ps(
        Exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + slot), _mm256_set1_ps(new_max))), visible(slot));
    _mm256_storeu_ps(scores + slot, weight);
    block_sum = _mm256_add_ps(block_sum, weight);
  }
  state.sum = state.sum * rescale + HorizontalSum(block_sum);
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

void Prefetch(const void* begin, int64_t bytes) {
  for (int64_t offset = 0; offset < bytes; offset += 64) {
    _mm_prefetch(static_cast<const char*>(begin) + offset, _MM_HINT_T0);
  }
}

// PagedAttention for a pool storing T.
template <typename T>
void AttendTo(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
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

}  // namespace

void PagedAttention(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                    const AttentionQueries& queries, float scale, int64_t window) {
  if (pool.dtype() == DType::kBF16) {
    AttendTo<uint16_t>(pool, blocks, pool_layer, kv_head, queries, scale, window);
  } else {
    AttendTo<float>(pool, blocks, pool_layer, kv_head, queries, scale, window);
  }
}

void StepAttention(absl::Span<const AttentionSegment> segments, int num_kv_heads, int heads_per_kv, const float* q,
                   float* out, float scale, int64_t window) {
  struct Task {
    const AttentionSegment* segment;
    int kv_head;
    int64_t begin, end;  // the segment's query tokens [begin, end)
  };
  std::vector<Task> tasks;
  for (const AttentionSegment& segment : segments) {
    for (int g = 0; g < num_kv_heads; ++g) {
      for (int64_t t = 0; t < segment.tokens; t += kAttentionTokenTile) {
        tasks.push_back({&segment, g, t, std::min(segment.tokens, t + kAttentionTokenTile)});
      }
    }
  }
  if (segments.empty()) return;
  const int head_dim = segments[0].kv->pool().head_dim();
  const int64_t row_stride = int64_t{num_kv_heads} * heads_per_kv * head_dim;
#pragma omp parallel for schedule(dynamic)
  for (size_t i = 0; i < tasks.size(); ++i) {
    const Task& task = tasks[i];
    const AttentionSegment& segment = *task.segment;
    const int64_t offset =
        (segment.first_row + task.begin) * row_stride + int64_t{task.kv_head} * heads_per_kv * head_dim;
    PagedAttention(segment.kv->pool(), segment.kv->blocks(), segment.pool_layer, task.kv_head,
                   {.q = q + offset,
                    .out = out + offset,
                    .row_stride = row_stride,
                    .first_position = segment.first_position + task.begin,
                    .tokens = task.end - task.begin,
                    .heads = heads_per_kv},
                   scale, window);
  }
}

absl::Status CheckCpuRunsKernels() {
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return absl::OkStatus();
  return absl::FailedPreconditionError("this CPU lacks AVX2 or FMA, which the attention kernel needs (x86-64-v3)");
}

}  // namespace matformer
