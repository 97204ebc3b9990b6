#ifndef MATFORMER_CORE_KV_KV_CACHE_H_
#define MATFORMER_CORE_KV_KV_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/model/config.h"
#include "core/util/huge_page_array.h"

namespace matformer {

// How a KvPool stores keys and values (its class comment says how each is laid out).
enum class KvDtype { kF32, kBF16, kInt8 };
absl::string_view KvDtypeName(KvDtype dtype);  // "f32", "bf16", "int8"
// The storage "auto" means: the weights' dtype.
KvDtype KvDtypeOf(DType weights);

// A fixed pool of KV blocks shared by every sequence of the process (paged
// attention). A block holds `block_tokens` positions of keys and values for
// every layer and KV head. Per (layer, kv_head) a block is one key tile and
// one value tile: keys transposed, [head_dim][key_stride], so attention scores
// a query against 16 slots at once with vector FMAs across slots; values
// row-major, [block_tokens][value_stride], so it accumulates them with vector
// FMAs across the head dimension. The strides round block_tokens and head_dim up
// to 16 (whole AVX-512 vectors); the padding stays zero. A (layer, head)'s
// key tile and value tile are adjacent (measured on 16 x 512-token sequences:
// 11 ms with K and V apart, 8 ms together), and the storage is
// [layer][kv_head][block], so a sequence whose blocks have consecutive ids is
// one contiguous run per (layer, head) that the hardware prefetcher streams
// (decode attention, 16 x 512 positions, bf16: 3.4-3.6 ms against 4.1-4.3 ms
// for blocks scattered over the pool, bench/attention_bench). The pool sits
// on huge pages (HugePageArray).
//
// To keep ids consecutive, Allocate continues a sequence right after its last
// block when that block is free, and starts a new run of blocks in the middle
// of the longest free run (at its start if nothing precedes it), leaving room
// for the sequence before it to grow into. The price: spread over the pool,
// the first few sequences already make most of its huge pages resident; the
// pool is sized (--kv_blocks) for the load it must hold anyway.
//
// Keys and values are stored in f32, bf16 or int8 (`dtype`). In bf16 the
// pool is half the size and attention reads half the bytes (rounded to
// nearest even when written, widened exactly when read). bf16 tiles
// interleave pairs of rows, so that one vector load holds 2 rows of 16 and
// each widens to f32 in one instruction (a shift for the even row, a mask for
// the odd one): keys [head_dim / 2][key_stride][2], values
// [block_tokens / 2][value_stride][2], the halved dimension rounded up
// (KeyIndex, ValueIndex). In int8 the pool is a quarter of
// f32 plus one f32 scale per (position, kv head) for its key and one for its
// value: symmetric, scale = max |x| / 127 over the head_dim values (llama.cpp's
// q8_0 with one block per head vector). Tiles keep the f32 layout (a row of 16
// int8 widens in one sign-extending load and one conversion), an int8 key tile
// is followed by its key_stride key scales and a value tile by key_stride
// value scales (KeyScales, ValueScales); attention multiplies a score by its
// key's scale and a softmax weight by its value's.
class KvPool {
 public:
  static constexpr int kKeySlotMultiple = 16;
  static constexpr int kValueDimMultiple = 16;

  KvPool(int num_layers, int num_kv_heads, int head_dim, int block_tokens, int64_t num_blocks,
         KvDtype dtype = KvDtype::kF32);
  // The bytes one block takes in a pool of this shape (every layer and head).
  static int64_t BlockBytes(int num_layers, int num_kv_heads, int head_dim, int block_tokens, KvDtype dtype);

  int num_layers() const { return num_layers_; }
  int num_kv_heads() const { return num_kv_heads_; }
  int head_dim() const { return head_dim_; }
  int block_tokens() const { return block_tokens_; }
  int key_stride() const { return key_stride_; }
  int value_stride() const { return value_stride_; }
  KvDtype dtype() const { return dtype_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const;
  int64_t used_blocks() const { return num_blocks_ - free_blocks(); }
  size_t bytes() const { return storage_.bytes(); }

  // Appends `count` blocks to `out` (a sequence's blocks; the new ones follow
  // out->back() where free) or none: ResourceExhausted (naming how many are
  // free) when the pool cannot satisfy the request.
  absl::Status Allocate(int64_t count, std::vector<int32_t>* out);
  void Free(const std::vector<int32_t>& blocks);

  // Stores one position's key and value (head_dim each) in `slot` of `block`.
  void Write(int32_t block, int layer, int kv_head, int slot, const float* key, const float* value);
  // The key tile [head_dim][key_stride] and value tile [block_tokens][value_stride]
  // as stored: T is float for an f32 pool, uint16_t (bf16 bits, pairs
  // interleaved) for a bf16 one, int8_t for an int8 one.
  template <typename T>
  const T* KeyTile(int32_t block, int layer, int kv_head) const {
    return reinterpret_cast<const T*>(storage_.data() + KeyOffset(block, layer, kv_head));
  }
  template <typename T>
  const T* ValueTile(int32_t block, int layer, int kv_head) const {
    return reinterpret_cast<const T*>(storage_.data() + ValueOffset(block, layer, kv_head));
  }
  // An int8 pool's scales of the slots' keys and values (key_stride each, 0
  // for unwritten slots); null for other pools.
  const float* KeyScales(int32_t block, int layer, int kv_head) const {
    if (scale_bytes_ == 0) return nullptr;
    return reinterpret_cast<const float*>(storage_.data() + ValueOffset(block, layer, kv_head) - scale_bytes_);
  }
  const float* ValueScales(int32_t block, int layer, int kv_head) const {
    if (scale_bytes_ == 0) return nullptr;
    return reinterpret_cast<const float*>(storage_.data() + ValueOffset(block, layer, kv_head) + value_tile_bytes_ -
                                          scale_bytes_);
  }
  // Where element (dim j, slot) of a key tile and (slot, dim j) of a value tile are.
  int64_t KeyIndex(int j, int slot) const {
    return ((int64_t{j >> row_group_log2_} * key_stride_ + slot) << row_group_log2_) + (j & row_group_mask_);
  }
  int64_t ValueIndex(int slot, int j) const {
    return ((int64_t{slot >> row_group_log2_} * value_stride_ + j) << row_group_log2_) + (slot & row_group_mask_);
  }
  // A tile's bytes, an int8 tile's scales included.
  int64_t key_tile_bytes() const { return key_tile_bytes_; }
  int64_t value_tile_bytes() const { return value_tile_bytes_; }
  // One position's share of a (layer, kv head)'s key and value tiles: the
  // bytes attention reads per position, padding and scales included.
  double position_bytes() const { return double(key_tile_bytes_ + value_tile_bytes_) / block_tokens_; }

 private:
  // In bytes from the start of the storage. Inline: attention asks for
  // several tiles per span of 64 keys.
  int64_t KeyOffset(int32_t block, int layer, int kv_head) const {
    return ((static_cast<int64_t>(layer) * num_kv_heads_ + kv_head) * num_blocks_ + block) *
           (key_tile_bytes_ + value_tile_bytes_);
  }
  int64_t ValueOffset(int32_t block, int layer, int kv_head) const {
    return KeyOffset(block, layer, kv_head) + key_tile_bytes_;
  }
  // The free-run bookkeeping; mutex_ held.
  bool IsFree(int32_t block) const;
  int32_t StartOfNewRun(int64_t wanted) const;
  void Take(int32_t block);
  void AddRun(int32_t start, int32_t length);
  void RemoveRun(int32_t start, int32_t length);

  const int num_layers_, num_kv_heads_, head_dim_, block_tokens_, key_stride_, value_stride_;
  const KvDtype dtype_;
  // Rows per interleaved group (2 in bf16, else 1) as a shift and a mask:
  // Write computes an index per element, and a division by a run-time
  // divisor costs tens of cycles.
  const int row_group_log2_, row_group_mask_;
  const int64_t num_blocks_;
  const int64_t key_tile_bytes_, value_tile_bytes_;
  const int64_t scale_bytes_;  // an int8 tile's scales, at its end; 0 for other dtypes
  HugePageArray<std::byte> storage_;  // [layer][kv_head][block][key tile, value tile]
  // std::mutex rather than absl::Mutex: ThreadSanitizer cannot see into
  // Debian's prebuilt (uninstrumented) Abseil, and these structures are the
  // ones the TSan build checks. Everything below is guarded by it.
  mutable std::mutex mutex_;
  // The free blocks as maximal runs of consecutive ids: start -> length, and
  // the same runs as (-length, start), the longest (then lowest) first.
  absl::btree_map<int32_t, int32_t> free_runs_;
  absl::btree_set<std::pair<int32_t, int32_t>> runs_by_length_;
  int64_t free_count_ = 0;
};

// A KV storage option as flags spell it: "f32", "bf16", "int8", or "auto"
// (nullopt: the model's weight dtype). The error reads "kv_dtype=<value>: expected ...".
absl::StatusOr<std::optional<KvDtype>> ParseKvDtype(absl::string_view kv_dtype);

// Checks a pool's size options: block_tokens in [1, 1024], num_blocks in
// [1, 2^24]; the error names the option.
absl::Status CheckKvPoolOptions(int64_t num_blocks, int block_tokens);

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
