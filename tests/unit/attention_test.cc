#include "core/kernels/attention.h"
#include "core/kernels/attention_kernel.h"
#include "core/kernels/amx.h"

#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "core/kernels/ops.h"
#include "gtest/gtest.h"

namespace matformer {
namespace {

// Shapes that reach every path of the kernel: block sizes below, at and above
// the 16-slot key group and not multiples of it, odd ones (a bf16 value tile
// pairs slots); head dims that are not whole vectors or span several value
// passes, odd ones (a bf16 key tile pairs dimensions); 1 to 5 query heads per
// KV head (query chunks of 4 straddle tokens); windows shorter than a block
// and than the context.
struct Shape {
  int head_dim, block_tokens, heads;
  int64_t window;
};

// How the kernel is reached: StepAttention (tiles of tokens, the CPU's
// instruction set) or one instruction set's kernel over all tokens at once.
// ctest also runs these with MATFORMER_DISABLE_AMX=1, so that on an AMX host
// kStep covers the AVX-512 kernel for bf16 too.
enum class Path { kStep, kAvx2, kAvx512, kAmx };

class PagedAttentionTest : public testing::TestWithParam<std::tuple<Shape, KvDtype, Path>> {};

// Softmax attention in double precision, position by position.
std::vector<float> Reference(const std::vector<std::vector<float>>& keys, const std::vector<std::vector<float>>& values,
                             const float* query, int head_dim, int64_t position, int64_t window, float scale) {
  const int64_t first = window > 0 ? std::max<int64_t>(0, position - window + 1) : 0;
  std::vector<double> scores;
  double max_score = -INFINITY;
  for (int64_t j = first; j <= position; ++j) {
    double dot = 0;
    for (int e = 0; e < head_dim; ++e) dot += static_cast<double>(query[e]) * keys[j][e];
    scores.push_back(dot * scale);
    max_score = std::max(max_score, scores.back());
  }
  double total = 0;
  for (double& s : scores) total += (s = std::exp(s - max_score));
  std::vector<float> out(head_dim);
  for (int e = 0; e < head_dim; ++e) {
    double sum = 0;
    for (int64_t j = first; j <= position; ++j) sum += scores[j - first] * values[j][e];
    out[e] = static_cast<float>(sum / total);
  }
  return out;
}

TEST_P(PagedAttentionTest, MatchesSoftmaxAttentionForEveryQuery) {
  const auto [shape, dtype, path] = GetParam();
  if (path == Path::kAvx512 && !__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512 on this CPU";
  constexpr int kLayers = 2, kKvHeads = 2, kLayer = 1;
  constexpr int64_t kPast = 37, kTokens = 41;  // 41 query tokens: two tiles of StepAttention
  const int64_t length = kPast + kTokens;
  KvPool pool(kLayers, kKvHeads, shape.head_dim, shape.block_tokens, /*num_blocks=*/2 * length + 4, dtype);
  const bool amx_runs = kernels_internal::AmxEnabled() && kernels_internal::PagedAttentionAmxRuns(pool);
  if (path == Path::kAmx && !amx_runs) GTEST_SKIP() << "AMX disabled, absent, or not for this pool";
  // The AMX kernel multiplies bf16 queries (scaled first) and bf16 softmax
  // weights: the reference takes the rounded queries, and the weights'
  // rounding (relative 2^-9 each) moves a result by at most 2^-9 of the
  // largest value.
  const bool amx = amx_runs && (path == Path::kAmx || path == Path::kStep);
  // Two sequences; the second's blocks interleave with the first's so that
  // neither sequence's blocks are consecutive in the pool.
  KvSequence other(&pool), sequence(&pool);
  for (int64_t n = shape.block_tokens; n <= length + shape.block_tokens; n += shape.block_tokens) {
    ASSERT_TRUE(other.Reserve(n).ok());
    ASSERT_TRUE(sequence.Reserve(n).ok());
  }
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<std::vector<float>> keys[kKvHeads], values[kKvHeads];
  for (int g = 0; g < kKvHeads; ++g) {
    for (int64_t p = 0; p < length; ++p) {
      std::vector<float> key(shape.head_dim), value(shape.head_dim);
      for (float& x : key) x = normal(rng);
      for (float& x : value) x = normal(rng);
      pool.Write(sequence.BlockOf(p), kLayer, g, sequence.SlotOf(p), key.data(), value.data());
      pool.Write(other.BlockOf(p), kLayer, g, other.SlotOf(p), value.data(), key.data());
      // The reference sees what the pool stores.
      if (dtype == KvDtype::kBF16) {
        for (float& x : key) x = Bf16ToF32(F32ToBf16(x));
        for (float& x : value) x = Bf16ToF32(F32ToBf16(x));
      } else if (dtype == KvDtype::kInt8) {
        const int32_t block = sequence.BlockOf(p);
        const int slot = sequence.SlotOf(p);
        const int8_t* key_tile = pool.KeyTile<int8_t>(block, kLayer, g);
        const int8_t* value_tile = pool.ValueTile<int8_t>(block, kLayer, g);
        for (int j = 0; j < shape.head_dim; ++j) {
          key[j] = key_tile[pool.KeyIndex(j, slot)] * pool.KeyScales(block, kLayer, g)[slot];
          value[j] = value_tile[pool.ValueIndex(slot, j)] * pool.ValueScales(block, kLayer, g)[slot];
        }
      }
      keys[g].push_back(key);
      values[g].push_back(value);
    }
  }
  const int64_t row = int64_t{kKvHeads} * shape.heads * shape.head_dim;
  constexpr int64_t kFirstRow = 3;  // the segment starts inside the step's rows
  std::vector<float> q((kFirstRow + kTokens) * row), out(q.size(), NAN);
  for (float& x : q) x = normal(rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  const AttentionSegment segment{.kv = &sequence, .pool_layer = kLayer, .first_row = kFirstRow,
                                 .first_position = kPast, .tokens = kTokens};
  if (path == Path::kStep) {
    StepAttention({&segment, 1}, kKvHeads, shape.heads, q.data(), out.data(), scale, shape.window);
  } else {
    for (int g = 0; g < kKvHeads; ++g) {
      const int64_t offset = kFirstRow * row + int64_t{g} * shape.heads * shape.head_dim;
      const AttentionQueries queries{.q = q.data() + offset, .out = out.data() + offset, .row_stride = row,
                                     .first_position = kPast, .tokens = kTokens, .heads = shape.heads};
      const PagedAttentionFn kernel = path == Path::kAvx2     ? kernels_internal::PagedAttentionAvx2
                                      : path == Path::kAvx512 ? kernels_internal::PagedAttentionAvx512
                                                              : kernels_internal::PagedAttentionAmx;
      kernel(pool, sequence.blocks(), kLayer, g, queries, scale, shape.window);
    }
  }

  double worst = 0, largest_value = 0;
  for (int g = 0; g < kKvHeads; ++g) {
    for (const std::vector<float>& value : values[g]) {
      for (float x : value) largest_value = std::max(largest_value, double{std::abs(x)});
    }
  }
  for (int64_t t = 0; t < kTokens; ++t) {
    for (int g = 0; g < kKvHeads; ++g) {
      for (int h = 0; h < shape.heads; ++h) {
        const int64_t offset = (kFirstRow + t) * row + (int64_t{g} * shape.heads + h) * shape.head_dim;
        std::vector<float> query(q.begin() + offset, q.begin() + offset + shape.head_dim);
        if (amx) {
          for (float& x : query) x = Bf16ToF32(F32ToBf16(x * scale));
        }
        const std::vector<float> expected =
            Reference(keys[g], values[g], query.data(), shape.head_dim, kPast + t, shape.window, amx ? 1.0f : scale);
        for (int e = 0; e < shape.head_dim; ++e) worst = std::max(worst, std::abs(double{out[offset + e]} - expected[e]));
      }
    }
  }
  EXPECT_LT(worst, 2e-5 + (amx ? 0x1p-9 * largest_value : 0.0)) << (amx ? "amx " : "") << KvDtypeName(dtype) << " head_dim " << shape.head_dim << " block " << shape.block_tokens << " heads "
                         << shape.heads << " window " << shape.window;
  for (int64_t i = 0; i < kFirstRow * row; ++i) ASSERT_TRUE(std::isnan(out[i])) << "row outside the segment written";
}

INSTANTIATE_TEST_SUITE_P(Shapes, PagedAttentionTest,
                         testing::Combine(testing::Values(Shape{64, 16, 4, 0}, Shape{64, 16, 4, 5}, Shape{6, 5, 3, 0},
                                                          Shape{8, 1, 1, 0}, Shape{24, 16, 5, 20},
                                                          Shape{72, 32, 2, 0}, Shape{16, 7, 2, 9},
                                                          Shape{256, 16, 2, 50}, Shape{9, 5, 3, 0},
                                                          Shape{33, 3, 4, 7}),
                                          testing::Values(KvDtype::kF32, KvDtype::kBF16, KvDtype::kInt8),
                                          testing::Values(Path::kStep, Path::kAvx2, Path::kAvx512)));
// The AMX kernel takes bf16 pools of head_dim a multiple of 64 and blocks a
// multiple of 16 tokens (other pools run on AVX-512; kStep covers that).
INSTANTIATE_TEST_SUITE_P(Amx, PagedAttentionTest,
                         testing::Combine(testing::Values(Shape{64, 16, 4, 0}, Shape{64, 16, 4, 5},
                                                          Shape{256, 16, 2, 50}, Shape{128, 32, 5, 20},
                                                          Shape{64, 48, 3, 0}, Shape{64, 16, 1, 0}),
                                          testing::Values(KvDtype::kBF16), testing::Values(Path::kAmx)));

}  // namespace
}  // namespace matformer
