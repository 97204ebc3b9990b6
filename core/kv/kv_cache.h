#ifndef MATFORMER_CORE_KV_KV_CACHE_H_
#define MATFORMER_CORE_KV_KV_CACHE_H_

#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/status/status.h"

namespace matformer {

// A fixed pool of KV blocks shared by every sequence of the process (paged
// attention). A block holds `block_tokens` positions of keys and values for
// every layer and KV head, laid out [layer][kv_head][slot][head_dim] so that
// one head's keys within a block are contiguous for the attention loop.
class KvPool {
 public:
  KvPool(int num_layers, int num_kv_heads, int head_dim, int block_tokens, int64_t num_blocks);

  int block_tokens() const { return block_tokens_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const;
  int64_t used_blocks() const { return num_blocks_ - free_blocks(); }
  size_t bytes() const { return storage_.size() * sizeof(float); }

  // Takes `count` blocks or none: ResourceExhausted (naming how many are free)
  // when the pool cannot satisfy the request.
  absl::Status Allocate(int64_t count, std::vector<int32_t>* out);
  void Free(const std::vector<int32_t>& blocks);

  // Pointer to the keys (values) of `slot` in `block` for `layer` and `kv_head`;
  // the following slots of the block follow at a stride of head_dim.
  float* Key(int32_t block, int layer, int kv_head, int slot);
  float* Value(int32_t block, int layer, int kv_head, int slot);

 private:
  int64_t Offset(int32_t block, int layer, int kv_head, int slot) const;

  const int num_layers_, num_kv_heads_, head_dim_, block_tokens_;
  const int64_t num_blocks_;
  const int64_t block_floats_;  // keys of one block (values are as many again)
  std::vector<float> storage_;  // [block][K|V][layer][kv_head][slot][head_dim]
  // std::mutex rather than absl::Mutex: ThreadSanitizer cannot see into
  // Debian's prebuilt (uninstrumented) Abseil, and these structures are the
  // ones the TSan build checks. Everything below is guarded by it.
  mutable std::mutex mutex_;
  std::vector<int32_t> free_list_;
};

// The KV blocks of one sequence. Returns them to the pool when destroyed, so
// finishing, cancelling or failing a sequence can never leak blocks.
class KvSequence {
 public:
  explicit KvSequence(KvPool* pool) : pool_(pool) {}
  ~KvSequence();
  KvSequence(const KvSequence&) = delete;
  KvSequence& operator=(const KvSequence&) = delete;

  // Makes room for positions [0, length): allocates the missing blocks or
  // fails without changing anything.
  absl::Status Reserve(int64_t length);
  // Number of positions whose keys and values are stored.
  int64_t length() const { return length_; }
  void set_length(int64_t length) { length_ = length; }
  int64_t capacity() const;

  int32_t BlockOf(int64_t position) const { return blocks_[position / pool_->block_tokens()]; }
  int SlotOf(int64_t position) const { return static_cast<int>(position % pool_->block_tokens()); }
  const std::vector<int32_t>& blocks() const { return blocks_; }
  KvPool& pool() const { return *pool_; }

 private:
  KvPool* pool_;
  std::vector<int32_t> blocks_;
  int64_t length_ = 0;
};

}  // namespace matformer

#endif  // MATFORMER_CORE_KV_KV_CACHE_H_
