#include "core/kernels/attention.h"

#include <algorithm>
#include <vector>

#include "core/kernels/amx.h"
#include "core/kernels/attention_kernel.h"
#include "core/kernels/avx2_math.h"

namespace matformer {

namespace kernels_internal {

void PagedAttentionAvx2(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                        const AttentionQueries& queries, float scale, int64_t window) {
  PagedAttentionKernel<Avx2>::Run(pool, blocks, pool_layer, kv_head, queries, scale, window);
}

}  // namespace kernels_internal

void PagedAttention(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                    const AttentionQueries& queries, float scale, int64_t window) {
  // The same arithmetic in half the instructions (and twice the FMA width
  // where the FMA units are 512 bits wide): on this repo's AMD EPYC test
  // machine the AVX-512 build took 0.6x the AVX2 build's time, both on 16
  // sequences x 512 bf16 positions streamed from DRAM and on 2 in cache.
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (kernels_internal::AmxEnabled() && kernels_internal::PagedAttentionAmxRuns(pool)) {
    kernels_internal::PagedAttentionAmx(pool, blocks, pool_layer, kv_head, queries, scale, window);
    return;
  }
  (avx512 ? kernels_internal::PagedAttentionAvx512 : kernels_internal::PagedAttentionAvx2)(
      pool, blocks, pool_layer, kv_head, queries, scale, window);
}

void StepAttention(absl::Span<const AttentionSegment> segments, int num_kv_heads, int heads_per_kv, const float* q,
                   float* out, float scale, int64_t window, PagedAttentionFn kernel) {
  struct Task {
    const AttentionSegment* segment;
    int kv_head;
    int64_t begin, end;  // the segment's query tokens [begin, end)
  };
  if (segments.empty()) return;
  std::vector<Task> tasks;
  for (const AttentionSegment& segment : segments) {
    for (int g = 0; g < num_kv_heads; ++g) {
      for (int64_t t = 0; t < segment.tokens; t += kAttentionTokenTile) {
        tasks.push_back({&segment, g, t, std::min(segment.tokens, t + kAttentionTokenTile)});
      }
    }
  }
  const int head_dim = segments[0].kv->pool().head_dim();
  const int64_t row_stride = int64_t{num_kv_heads} * heads_per_kv * head_dim;
#pragma omp parallel for schedule(dynamic)
  for (size_t i = 0; i < tasks.size(); ++i) {
    const Task& task = tasks[i];
    const AttentionSegment& segment = *task.segment;
    const int64_t offset =
        (segment.first_row + task.begin) * row_stride + int64_t{task.kv_head} * heads_per_kv * head_dim;
    kernel(segment.kv->pool(), segment.kv->blocks(), segment.pool_layer, task.kv_head,
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
