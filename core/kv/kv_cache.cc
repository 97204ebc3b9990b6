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
      block_elements_(static_cast<int64_t>(num_layers) * num_kv_heads * (key_tile_elements_ + value_tile_elements_)),
      storage_(static_cast<size_t>(num_blocks * block_elements_ * element_bytes_)) {
  free_list_.reserve(num_blocks);
  // Hand out low block ids first: they were touched most recently.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_list_.push_back(static_cast<int32_t>(b));
}

int64_t KvPool::free_blocks() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(free_list_.size());
}

absl::Status KvPool::Allocate(int64_t count, std::vector<int32_t>* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (count > static_cast<int64_t>(free_list_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache: ", count, " blocks needed, ",
                                                     free_list_.size(), " of ", num_blocks_,
                                                     " free"));
  }
  for (int64_t i = 0; i < count; ++i) {
    out->push_back(free_list_.back());
    free_list_.pop_back();
  }
  return absl::OkStatus();
}

void KvPool::Free(const std::vector<int32_t>& blocks) {
  std::lock_guard<std::mutex> lock(mutex_);
  free_list_.insert(free_list_.end(), blocks.rbegin(), blocks.rend());
}

int64_t KvPool::KeyOffset(int32_t block, int layer, int kv_head) const {
  return block * block_elements_ +
         (static_cast<int64_t>(layer) * num_kv_heads_ + kv_head) * (key_tile_elements_ + value_tile_elements_);
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
