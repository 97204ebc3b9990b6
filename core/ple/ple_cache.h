#ifndef MATFORMER_CORE_PLE_PLE_CACHE_H_
#define MATFORMER_CORE_PLE_PLE_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace matformer {

// The per-layer-embedding vectors (L x d_ple floats per token) of the tokens
// recently seen by any request. A token's vector depends on its id only, so
// one cache serves every sequence and every submodel. Bounded in payload
// bytes, least recently used entries go first. Thread-safe.
class PleCache {
 public:
  struct Stats {
    uint64_t hits = 0;
    uint64_t misses = 0;
    uint64_t evictions = 0;
    size_t bytes = 0;  // payload bytes held now (floats of the cached vectors)
    size_t entries = 0;
  };

  // max_bytes == 0 disables caching (every lookup misses).
  PleCache(int64_t floats_per_token, size_t max_bytes);

  // Copies the cached vector of `token` into `out` and returns true, or
  // returns false (a miss).
  bool Lookup(int32_t token, float* out);
  // Stores `values` (floats_per_token floats) for `token`, evicting as needed.
  void Insert(int32_t token, const float* values);

  Stats stats() const;
  size_t max_bytes() const { return max_bytes_; }
  int64_t floats_per_token() const { return floats_per_token_; }

 private:
  struct Entry {
    std::vector<float> values;
    std::list<int32_t>::iterator recency;
  };

  const int64_t floats_per_token_;
  const size_t entry_bytes_;
  const size_t max_bytes_;
  // std::mutex rather than absl::Mutex: ThreadSanitizer cannot see into
  // Debian's prebuilt (uninstrumented) Abseil, and these structures are the
  // ones the TSan build checks. Everything below is guarded by it.
  mutable std::mutex mutex_;
  absl::flat_hash_map<int32_t, Entry> entries_;
  std::list<int32_t> recency_;  // front = most recent
  Stats stats_;
};

}  // namespace matformer

#endif  // MATFORMER_CORE_PLE_PLE_CACHE_H_
