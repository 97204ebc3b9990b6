#include "core/ple/ple_cache.h"

#include <algorithm>

namespace matformer {

PleCache::PleCache(int64_t floats_per_token, size_t max_bytes)
    : floats_per_token_(floats_per_token),
      entry_bytes_(static_cast<size_t>(floats_per_token) * sizeof(float)),
      max_bytes_(max_bytes) {}

bool PleCache::Lookup(int32_t token, float* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(token);
  if (it == entries_.end()) {
    ++stats_.misses;
    return false;
  }
  ++stats_.hits;
  recency_.splice(recency_.begin(), recency_, it->second.recency);
  std::copy(it->second.values.begin(), it->second.values.end(), out);
  return true;
}

void PleCache::Insert(int32_t token, const float* values) {
  if (entry_bytes_ > max_bytes_) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (entries_.contains(token)) return;  // another sequence computed it meanwhile
  while (stats_.bytes + entry_bytes_ > max_bytes_) {
    entries_.erase(recency_.back());
    recency_.pop_back();
    stats_.bytes -= entry_bytes_;
    ++stats_.evictions;
  }
  recency_.push_front(token);
  entries_.emplace(token, Entry{std::vector<float>(values, values + floats_per_token_), recency_.begin()});
  stats_.bytes += entry_bytes_;
  stats_.entries = entries_.size();
}

PleCache::Stats PleCache::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  Stats stats = stats_;
  stats.entries = entries_.size();
  return stats;
}

}  // namespace matformer
