#include "core/kv/kv_cache.h"

#include <algorithm>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "core/kernels/ops.h"
#include "gtest/gtest.h"

namespace matformer {
namespace {

TEST(KvPoolTest, BlocksReturnWhenSequencesEnd) {
  KvPool pool(/*num_layers=*/2, /*num_kv_heads=*/1, /*head_dim=*/4, /*block_tokens=*/16, /*num_blocks=*/8);
  {
    KvSequence a(&pool), b(&pool);
    ASSERT_TRUE(a.Reserve(17).ok());  // 2 blocks
    ASSERT_TRUE(b.Reserve(64).ok());  // 4 blocks
    EXPECT_EQ(pool.used_blocks(), 6);
    EXPECT_EQ(a.capacity(), 32);
    ASSERT_TRUE(a.Reserve(20).ok());  // still fits in 2 blocks
    EXPECT_EQ(pool.used_blocks(), 6);
  }
  EXPECT_EQ(pool.used_blocks(), 0);
}

TEST(KvPoolTest, ExhaustionIsAnErrorAndChangesNothing) {
  KvPool pool(1, 1, 4, 16, 4);
  KvSequence a(&pool), b(&pool);
  ASSERT_TRUE(a.Reserve(48).ok());
  const absl::Status status = b.Reserve(32);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("1 of 4 free"), std::string::npos) << status;
  EXPECT_EQ(b.capacity(), 0);
  EXPECT_EQ(pool.free_blocks(), 1);
  ASSERT_TRUE(b.Reserve(16).ok());
}

// Block ids of a sequence stay consecutive where the pool can keep them so:
// attention then reads one contiguous run per (layer, head).
bool Consecutive(const std::vector<int32_t>& blocks) {
  for (size_t i = 1; i < blocks.size(); ++i) {
    if (blocks[i] != blocks[i - 1] + 1) return false;
  }
  return true;
}

TEST(KvPoolTest, SequencesGrowingTogetherKeepConsecutiveBlocks) {
  KvPool pool(1, 1, 4, /*block_tokens=*/1, /*num_blocks=*/64);
  KvSequence a(&pool), b(&pool), c(&pool), d(&pool);
  // Prompts first, then decode steps that take a block for each in turn.
  for (KvSequence* s : {&a, &b, &c, &d}) ASSERT_TRUE(s->Reserve(4).ok());
  for (int64_t length = 5; length <= 12; ++length) {
    for (KvSequence* s : {&a, &b, &c, &d}) ASSERT_TRUE(s->Reserve(length).ok());
  }
  for (KvSequence* s : {&a, &b, &c, &d}) {
    EXPECT_EQ(s->blocks().size(), 12u);
    EXPECT_TRUE(Consecutive(s->blocks())) << ::testing::PrintToString(s->blocks());
  }
  EXPECT_EQ(a.blocks().front(), 0);  // nothing precedes the first run: no gap left before it
  EXPECT_EQ(pool.used_blocks(), 48);
}

TEST(KvPoolTest, FreedBlocksCoalesceAndEveryBlockIsHandedOutOnce) {
  KvPool pool(1, 1, 4, 1, 32);
  std::vector<std::unique_ptr<KvSequence>> sequences;
  for (int i = 0; i < 8; ++i) {
    sequences.push_back(std::make_unique<KvSequence>(&pool));
    ASSERT_TRUE(sequences.back()->Reserve(1 + i % 3).ok());
  }
  // Free every other sequence, leaving holes, then fill the pool to the last block.
  for (int i = 0; i < 8; i += 2) sequences[i].reset();
  auto rest = std::make_unique<KvSequence>(&pool);
  ASSERT_TRUE(rest->Reserve(pool.free_blocks()).ok());
  EXPECT_EQ(pool.free_blocks(), 0);
  std::vector<int32_t> all = rest->blocks();
  for (const auto& s : sequences) {
    if (s != nullptr) all.insert(all.end(), s->blocks().begin(), s->blocks().end());
  }
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), 32u);
  for (int32_t i = 0; i < 32; ++i) EXPECT_EQ(all[i], i);
  // Once everything is back the pool is one run again: one sequence gets ids 0..31 in order.
  sequences.clear();
  rest.reset();
  KvSequence whole(&pool);
  ASSERT_TRUE(whole.Reserve(32).ok());
  EXPECT_TRUE(Consecutive(whole.blocks()));
  EXPECT_EQ(whole.blocks().front(), 0);
}

TEST(KvPoolTest, KeysAndValuesOfDifferentSlotsDoNotAlias) {
  constexpr int kHeadDim = 4, kBlockTokens = 2;
  KvPool pool(2, 2, kHeadDim, kBlockTokens, 3);
  KvSequence a(&pool);
  ASSERT_TRUE(a.Reserve(6).ok());
  auto key_of = [](int64_t position, int layer, int head, int j) { return 1000.0f * position + 100 * layer + 10 * head + j; };
  for (int64_t position = 0; position < 6; ++position) {
    for (int layer = 0; layer < 2; ++layer) {
      for (int head = 0; head < 2; ++head) {
        float key[kHeadDim], value[kHeadDim];
        for (int j = 0; j < kHeadDim; ++j) {
          key[j] = key_of(position, layer, head, j);
          value[j] = -key[j] - 1;
        }
        pool.Write(a.BlockOf(position), layer, head, a.SlotOf(position), key, value);
      }
    }
  }
  for (int64_t position = 0; position < 6; ++position) {
    for (int layer = 0; layer < 2; ++layer) {
      for (int head = 0; head < 2; ++head) {
        // Keys transposed [head_dim][key_stride], values [block_tokens][value_stride].
        const float* keys = pool.KeyTile<float>(a.BlockOf(position), layer, head);
        const float* values = pool.ValueTile<float>(a.BlockOf(position), layer, head);
        const int slot = a.SlotOf(position);
        for (int j = 0; j < kHeadDim; ++j) {
          EXPECT_EQ(keys[j * pool.key_stride() + slot], key_of(position, layer, head, j));
          EXPECT_EQ(keys[pool.KeyIndex(j, slot)], key_of(position, layer, head, j));
          EXPECT_EQ(values[slot * pool.value_stride() + j], -key_of(position, layer, head, j) - 1);
          EXPECT_EQ(values[pool.ValueIndex(slot, j)], -key_of(position, layer, head, j) - 1);
        }
      }
    }
  }
}

TEST(KvPoolTest, Bf16PoolIsHalfTheSizeAndStoresTheRoundedValues) {
  KvPool f32(2, 2, 8, 16, 4, KvDtype::kF32), bf16(2, 2, 8, 16, 4, KvDtype::kBF16);
  EXPECT_EQ(bf16.bytes() * 2, f32.bytes());
  float key[8], value[8];
  for (int j = 0; j < 8; ++j) {
    key[j] = 1.0f + j * 0.001f;  // not representable in bf16
    value[j] = -3.14159f * j;
  }
  bf16.Write(/*block=*/3, /*layer=*/1, /*kv_head=*/1, /*slot=*/5, key, value);
  const uint16_t* keys = bf16.KeyTile<uint16_t>(3, 1, 1);
  const uint16_t* values = bf16.ValueTile<uint16_t>(3, 1, 1);
  // Pairs interleaved: key dims 2i and 2i + 1 of a slot side by side, value
  // slots 4 and 5 of a dimension side by side.
  for (int j = 0; j < 8; ++j) {
    EXPECT_EQ(keys[(j / 2 * bf16.key_stride() + 5) * 2 + j % 2], F32ToBf16(key[j]));
    EXPECT_EQ(keys[bf16.KeyIndex(j, 5)], F32ToBf16(key[j]));
    EXPECT_EQ(values[(2 * bf16.value_stride() + j) * 2 + 1], F32ToBf16(value[j]));
    EXPECT_EQ(values[bf16.ValueIndex(5, j)], F32ToBf16(value[j]));
  }
}

// int8: a quarter of f32 plus one f32 scale per slot for keys and one for
// values; each element within half a step (max |x| / 254) of what was written,
// the largest one exact; the scales stay apart per slot, layer and head.
TEST(KvPoolTest, Int8PoolStoresEachHeadVectorWithinHalfAStep) {
  constexpr int kHeadDim = 8, kBlockTokens = 16;
  KvPool f32(2, 2, kHeadDim, kBlockTokens, 4, KvDtype::kF32), int8(2, 2, kHeadDim, kBlockTokens, 4, KvDtype::kInt8);
  const int64_t scales = 2 * kBlockTokens * sizeof(float);  // key and value scales of a (block, layer, head)
  EXPECT_EQ(int8.bytes(), f32.bytes() / 4 + 4 * 2 * 2 * scales);
  EXPECT_EQ(int8.bytes(), static_cast<size_t>(4 * KvPool::BlockBytes(2, 2, kHeadDim, kBlockTokens, KvDtype::kInt8)));
  float key[kHeadDim], value[kHeadDim], zero[kHeadDim] = {};
  for (int j = 0; j < kHeadDim; ++j) {
    key[j] = 0.37f * (j - 3) + 0.001f;
    value[j] = -50.0f + 13.3f * j;
  }
  int8.Write(/*block=*/3, /*layer=*/1, /*kv_head=*/1, /*slot=*/5, key, value);
  int8.Write(3, 1, 1, /*slot=*/6, zero, value);  // an all-zero vector: scale 0, no division by it
  int8.Write(3, 1, 0, 5, value, key);            // the other head: its own scales
  const float* key_scales = int8.KeyScales(3, 1, 1);
  const float* value_scales = int8.ValueScales(3, 1, 1);
  ASSERT_NE(key_scales, nullptr);
  EXPECT_FLOAT_EQ(key_scales[5], (0.37f * 4 + 0.001f) / 127.0f);  // max |key| is key[7]
  EXPECT_FLOAT_EQ(value_scales[5], 50.0f / 127.0f);
  EXPECT_EQ(key_scales[6], 0.0f);
  EXPECT_FLOAT_EQ(int8.KeyScales(3, 1, 0)[5], 50.0f / 127.0f);
  const int8_t* keys = int8.KeyTile<int8_t>(3, 1, 1);
  const int8_t* values = int8.ValueTile<int8_t>(3, 1, 1);
  for (int j = 0; j < kHeadDim; ++j) {
    EXPECT_EQ(keys[j * int8.key_stride() + 5], keys[int8.KeyIndex(j, 5)]);  // the f32 layout
    EXPECT_NEAR(keys[int8.KeyIndex(j, 5)] * key_scales[5], key[j], key_scales[5] / 2 * 1.0001f) << j;
    EXPECT_NEAR(values[int8.ValueIndex(5, j)] * value_scales[5], value[j], value_scales[5] / 2 * 1.0001f) << j;
    EXPECT_EQ(keys[int8.KeyIndex(j, 6)], 0);
  }
  EXPECT_EQ(keys[int8.KeyIndex(7, 5)], 127);  // the largest magnitude is exact
  EXPECT_EQ(values[int8.ValueIndex(5, 0)], -127);
  EXPECT_EQ(f32.KeyScales(3, 1, 1), nullptr);
}

TEST(KvDtypeTest, ParsesFlagValues) {
  EXPECT_EQ(*ParseKvDtype("auto"), std::nullopt);
  EXPECT_EQ(*ParseKvDtype("int8"), KvDtype::kInt8);
  EXPECT_EQ(*ParseKvDtype("bf16"), KvDtype::kBF16);
  EXPECT_EQ(ParseKvDtype("fp8").status().message(), "kv_dtype=fp8: expected auto, f32, bf16 or int8");
  EXPECT_EQ(KvDtypeOf(DType::kBF16), KvDtype::kBF16);
}

TEST(KvPoolTest, ConcurrentSequencesNeverShareBlocks) {
  KvPool pool(1, 1, 4, 4, 64);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool] {
      for (int round = 0; round < 200; ++round) {
        KvSequence sequence(&pool);
        if (sequence.Reserve(4 * (1 + round % 8)).ok()) {
          for (int32_t block : sequence.blocks()) EXPECT_LT(block, 64);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(pool.used_blocks(), 0);
}

}  // namespace
}  // namespace matformer
