// The paged attention kernel (attention_kernel.h) for AVX-512: 16 lanes.
// Compiled with -mavx512f; attention.cc calls it only on a CPU that has it.

#include <immintrin.h>

#include "core/kernels/attention_kernel.h"
#include "core/kernels/avx512_math.h"

namespace matformer::kernels_internal {

void PagedAttentionAvx512(const KvPool& pool, absl::Span<const int32_t> blocks, int pool_layer, int kv_head,
                          const AttentionQueries& queries, float scale, int64_t window) {
  PagedAttentionKernel<Avx512>::Run(pool, blocks, pool_layer, kv_head, queries, scale, window);
}

}  // namespace matformer::kernels_internal
