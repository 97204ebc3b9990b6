#ifndef MATFORMER_CORE_KERNELS_ATTENTION_H_
#define MATFORMER_CORE_KERNELS_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/kv/kv_cache.h"

// Attention over the paged KV cache, shared by both model families. The one
// kernel runs prefill (many query tokens) and decode (one per sequence).
namespace matformer {

// The query rows of one sequence for the query heads that share one KV head.
// Query token i sits at position first_position + i; head h of token i is read
// from q + i * row_stride + h * head_dim and its result written to
// out + i * row_stride + h * head_dim.
struct AttentionQueries {
  const float* q;
  float* out;
  int64_t row_stride;
  int64_t first_position;
  int64_t tokens;
  int heads;
};

// out = softmax(scale * q · K^T) · V for every query of `queries`, causal
// (token at position p sees keys [p - window + 1, p], or [0, p] when window
// is 0), over the keys and values of `kv_head` in pool layer `pool_layer` of
// the sequence whose blocks are `blocks`. Every position a query sees must be
// written. Runs on the calling thread (callers parallelise over sequences and
// KV heads). Online softmax, as in FlashAttention: one pass over the blocks,
// each block's key and value tiles are read once for all the queries.
void PagedAttention(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                    const AttentionQueries& queries, float scale, int64_t window);

// The rows of one sequence in a step's query matrix.
struct AttentionSegment {
  const KvSequence* kv;
  int pool_layer;
  int64_t first_row;       // row of its first query token
  int64_t first_position;  // position of that token
  int64_t tokens;
};

// PagedAttention's signature, for running one instruction set's build (tests, bench/attention_bench).
using PagedAttentionFn = void (*)(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                                  const AttentionQueries& queries, float scale, int64_t window);

// PagedAttention (or `kernel`) for every segment and KV head of a step, in
// tasks of up to kAttentionTokenTile query tokens spread over the OpenMP
// threads. q and out are [rows][num_kv_heads * heads_per_kv * head_dim], the
// query heads of KV head g being heads [g * heads_per_kv, (g + 1) * heads_per_kv).
inline constexpr int64_t kAttentionTokenTile = 32;
void StepAttention(absl::Span<const AttentionSegment> segments, int num_kv_heads, int heads_per_kv, const float* q,
                   float* out, float scale, int64_t window, PagedAttentionFn kernel = PagedAttention);

// These kernels and ops.h's need AVX2 and FMA (x86-64-v3; AVX-512 is used
// when present): FailedPrecondition on a CPU without them, checked when a
// model is loaded.
absl::Status CheckCpuRunsKernels();

}  // namespace matformer

#endif  // MATFORMER_CORE_KERNELS_ATTENTION_H_
