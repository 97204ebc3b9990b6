#include "core/kv/kv_cache.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/kernels/ops.h"
#include "core/util/round_up.h"

namespace matformer {

namespace {

int RowGroup(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32: return 1;
    case KvDtype::kBF16: return 2;
    case KvDtype::kInt8: return 1;
  }
  return 1;
}

int64_t ElementBytes(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32: return 4;
    case KvDtype::kBF16: return 2;
    case KvDtype::kInt8: return 1;
  }
  return 4;
}

int64_t KeyStride(int block_tokens) { return RoundUp(block_tokens, KvPool::kKeySlotMultiple); }

// An int8 tile's scales: one float per key slot.
int64_t ScaleBytes(int block_tokens, KvDtype dtype) {
  return dtype == KvDtype::kInt8 ? KeyStride(block_tokens) * int64_t{sizeof(float)} : 0;
}

int64_t KeyTileBytes(int head_dim, int block_tokens, KvDtype dtype) {
  return RoundUp(head_dim, RowGroup(dtype)) * KeyStride(block_tokens) * ElementBytes(dtype) +
         ScaleBytes(block_tokens, dtype);
}

int64_t ValueTileBytes(int head_dim, int block_tokens, KvDtype dtype) {
  return RoundUp(block_tokens, RowGroup(dtype)) * RoundUp(head_dim, KvPool::kValueDimMultiple) * ElementBytes(dtype) +
         ScaleBytes(block_tokens, dtype);
}

// Symmetric int8: x ~ scale * round(x / scale) with scale = max |x| / 127.
float Int8Scale(const float* x, int n) {
  float largest = 0.0f;
  for (int i = 0; i < n; ++i) largest = std::max(largest, std::abs(x[i]));
  return largest / 127.0f;
}

int8_t ToInt8(float x, float inverse_scale) {
  return static_cast<int8_t>(std::clamp(std::lrint(x * inverse_scale), -127L, 127L));
}

}  // namespace

absl::string_view KvDtypeName(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32: return "f32";
    case KvDtype::kBF16: return "bf16";
    case KvDtype::kInt8: return "int8";
  }
  return "?";
}

KvDtype KvDtypeOf(DType weights) { return weights == DType::kBF16 ? KvDtype::kBF16 : KvDtype::kF32; }

int64_t KvPool::BlockBytes(int num_layers, int num_kv_heads, int head_dim, int block_tokens, KvDtype dtype) {
  return int64_t{num_layers} * num_kv_heads *
         (KeyTileBytes(head_dim, block_tokens, dtype) + ValueTileBytes(head_dim, block_tokens, dtype));
}

KvPool::KvPool(int num_layers, int num_kv_heads, int head_dim, int block_tokens, int64_t num_blocks, KvDtype dtype)
    : num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      block_tokens_(block_tokens),
      key_stride_(static_cast<int>(KeyStride(block_tokens))),
      value_stride_(static_cast<int>(RoundUp(head_dim, kValueDimMultiple))),
      dtype_(dtype),
      row_group_log2_(RowGroup(dtype) == 2 ? 1 : 0),
      row_group_mask_(RowGroup(dtype) - 1),
      num_blocks_(num_blocks),
      key_tile_bytes_(KeyTileBytes(head_dim, block_tokens, dtype)),
      value_tile_bytes_(ValueTileBytes(head_dim, block_tokens, dtype)),
      scale_bytes_(ScaleBytes(block_tokens, dtype)),
      storage_(static_cast<size_t>(num_blocks * BlockBytes(num_layers, num_kv_heads, head_dim, block_tokens, dtype))) {
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

void KvPool::Write(int32_t block, int layer, int kv_head, int slot, const float* key, const float* value) {
  std::byte* keys = storage_.data() + KeyOffset(block, layer, kv_head);
  std::byte* values = storage_.data() + ValueOffset(block, layer, kv_head);
  auto write = [&](auto* key_tile, auto* value_tile, auto convert_key, auto convert_value) {
    for (int j = 0; j < head_dim_; ++j) {
      key_tile[KeyIndex(j, slot)] = convert_key(key[j]);
      value_tile[ValueIndex(slot, j)] = convert_value(value[j]);
    }
  };
  switch (dtype_) {
    case KvDtype::kF32: {
      auto same = [](float x) { return x; };
      write(reinterpret_cast<float*>(keys), reinterpret_cast<float*>(values), same, same);
      break;
    }
    case KvDtype::kBF16:
      write(reinterpret_cast<uint16_t*>(keys), reinterpret_cast<uint16_t*>(values), F32ToBf16, F32ToBf16);
      break;
    case KvDtype::kInt8: {
      const float key_scale = Int8Scale(key, head_dim_), value_scale = Int8Scale(value, head_dim_);
      const float key_inverse = key_scale > 0 ? 1.0f / key_scale : 0.0f;
      const float value_inverse = value_scale > 0 ? 1.0f / value_scale : 0.0f;
      write(reinterpret_cast<int8_t*>(keys), reinterpret_cast<int8_t*>(values),
            [&](float x) { return ToInt8(x, key_inverse); }, [&](float x) { return ToInt8(x, value_inverse); });
      const_cast<float*>(KeyScales(block, layer, kv_head))[slot] = key_scale;
      const_cast<float*>(ValueScales(block, layer, kv_head))[slot] = value_scale;
      break;
    }
  }
}

KvSequence::~KvSequence() {
  if (!blocks_.empty()) pool_->Free(blocks_);
}

absl::StatusOr<std::optional<KvDtype>> ParseKvDtype(absl::string_view kv_dtype) {
  if (kv_dtype == "auto") return std::nullopt;
  for (KvDtype dtype : {KvDtype::kF32, KvDtype::kBF16, KvDtype::kInt8}) {
    if (kv_dtype == KvDtypeName(dtype)) return dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("kv_dtype=", kv_dtype, ": expected auto, f32, bf16 or int8"));
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
