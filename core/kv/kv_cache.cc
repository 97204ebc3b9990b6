#include "core/kv/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/kernels/ops.h"
#include "core/util/round_up.h"

namespace matformer {

KvPool::KvPool(int num_layers, int num_kv_heads, int head_dim, int block_tokens, int64_t num_blocks, DType dtype)
    : num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      block_tokens_(block_tokens),
      key_stride_(static_cast<int>(RoundUp(block_tokens, kKeySlotMultiple))),
      value_stride_(static_cast<int>(RoundUp(head_dim, kValueDimMultiple))),
      dtype_(dtype),
      element_bytes_(static_cast<int64_t>(DTypeSize(dtype))),
      num_blocks_(num_blocks),
      key_tile_elements_((dtype == DType::kBF16 ? RoundUp(head_dim, 2) : head_dim) * key_stride_),
      value_tile_elements_((dtype == DType::kBF16 ? RoundUp(block_tokens, 2) : block_tokens) * value_stride_),
      storage_(static_cast<size_t>(int64_t{num_layers} * num_kv_heads * num_blocks *
                                   (key_tile_elements_ + value_tile_elements_) * element_bytes_)) {
  if (num_blocks > 0) AddRun(0, static_cast<int32_t>(num_blocks));
}

int64_t KvPool::free_blocks() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return free_count_;
}

absl::Status KvPool::Allocate(int64_t count, std::vector<int32_t>* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (count > free_count_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache: ", count, " blocks needed, ", free_count_, " of ", num_blocks_, " free"));
  }
  int32_t next = out->empty() ? -1 : out->back() + 1;
  for (int64_t i = 0; i < count; ++i) {
    if (next < 0 || !IsFree(next)) next = StartOfNewRun(count - i);
    Take(next);
    out->push_back(next++);
  }
  return absl::OkStatus();
}

void KvPool::Free(const std::vector<int32_t>& blocks) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (int32_t block : blocks) {
    int32_t start = block, length = 1;
    auto after = free_runs_.find(block + 1);
    if (after != free_runs_.end()) {
      length += after->second;
      RemoveRun(after->first, after->second);
    }
    auto before = free_runs_.lower_bound(block);
    if (before != free_runs_.begin() && (--before)->first + before->second == block) {
      start = before->first;
      length += before->second;
      RemoveRun(before->first, before->second);
    }
    AddRun(start, length);
  }
}

bool KvPool::IsFree(int32_t block) const {
  auto run = free_runs_.upper_bound(block);
  if (run == free_runs_.begin()) return false;
  --run;
  return block < run->first + run->second;
}

int32_t KvPool::StartOfNewRun(int64_t wanted) const {
  const auto [minus_length, start] = *runs_by_length_.begin();
  if (start == 0) return 0;
  return start + static_cast<int32_t>(std::max<int64_t>(0, (-minus_length - wanted) / 2));
}

void KvPool::Take(int32_t block) {
  auto run = std::prev(free_runs_.upper_bound(block));
  const int32_t start = run->first, length = run->second;
  RemoveRun(start, length);
  if (block > start) AddRun(start, block - start);
  if (block + 1 < start + length) AddRun(block + 1, start + length - block - 1);
}

void KvPool::AddRun(int32_t start, int32_t length) {
  free_runs_.emplace(start, length);
  runs_by_length_.emplace(-length, start);
  free_count_ += length;
}

void KvPool::RemoveRun(int32_t start, int32_t length) {
  free_runs_.erase(start);
  runs_by_length_.erase({-length, start});
  free_count_ -= length;
}

int64_t KvPool::KeyOffset(int32_t block, int layer, int kv_head) const {
  return ((static_cast<int64_t>(layer) * num_kv_heads_ + kv_head) * num_blocks_ + block) *
         (key_tile_elements_ + value_tile_elements_);
}

int64_t KvPool::ValueOffset(int32_t block, int layer, int kv_head) const {
  return KeyOffset(block, layer, kv_head) + key_tile_elements_;
}

void KvPool::Write(int32_t block, int layer, int kv_head, int slot, const float* key, const float* value) {
  std::byte* keys = storage_.data() + KeyOffset(block, layer, kv_head) * element_bytes_;
  std::byte* values = storage_.data() + ValueOffset(block, layer, kv_head) * element_bytes_;
  auto write = [&](auto* key_tile, auto* value_tile, auto convert) {
    for (int j = 0; j < head_dim_; ++j) {
      key_tile[KeyIndex(j, slot)] = convert(key[j]);
      value_tile[ValueIndex(slot, j)] = convert(value[j]);
    }
  };
  if (dtype_ == DType::kBF16) {
    write(reinterpret_cast<uint16_t*>(keys), reinterpret_cast<uint16_t*>(values), F32ToBf16);
  } else {
    write(reinterpret_cast<float*>(keys), reinterpret_cast<float*>(values), [](float x) { return x; });
  }
}

KvSequence::~KvSequence() {
  if (!blocks_.empty()) pool_->Free(blocks_);
}

absl::StatusOr<std::optional<DType>> ParseKvDtype(absl::string_view kv_dtype) {
  if (kv_dtype == "auto") return std::nullopt;
  if (kv_dtype == "f32") return DType::kF32;
  if (kv_dtype == "bf16") return DType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("kv_dtype=", kv_dtype, ": expected auto, f32 or bf16"));
}

absl::Status CheckKvPoolOptions(int64_t num_blocks, int block_tokens) {
  if (block_tokens < 1 || block_tokens > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("kv_block_tokens = ", block_tokens, " outside [1, 1024]"));
  }
  if (num_blocks < 1 || num_blocks > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("kv_blocks = ", num_blocks, " outside [1, 2^24]"));
  }
  return absl::OkStatus();
}

int64_t KvSequence::capacity() const {
  return static_cast<int64_t>(blocks_.size()) * pool_->block_tokens();
}

absl::Status KvSequence::Reserve(int64_t length) {
  const int64_t needed = (length + pool_->block_tokens() - 1) / pool_->block_tokens();
  if (needed <= static_cast<int64_t>(blocks_.size())) return absl::OkStatus();
  return pool_->Allocate(needed - static_cast<int64_t>(blocks_.size()), &blocks_);
}

}  // namespace matformer
