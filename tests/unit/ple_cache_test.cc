#include "core/ple/ple_cache.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace matformer {
namespace {

std::vector<float> VectorOf(int32_t token, int64_t floats) {
  std::vector<float> values(floats);
  for (int64_t i = 0; i < floats; ++i) values[i] = static_cast<float>(token) + 0.001f * i;
  return values;
}

TEST(PleCacheTest, HitsReturnWhatWasInserted) {
  PleCache cache(8, 1024);
  std::vector<float> out(8);
  EXPECT_FALSE(cache.Lookup(5, out.data()));
  cache.Insert(5, VectorOf(5, 8).data());
  ASSERT_TRUE(cache.Lookup(5, out.data()));
  EXPECT_EQ(out, VectorOf(5, 8));
  const PleCache::Stats stats = cache.stats();
  EXPECT_EQ(stats.hits, 1u);
  EXPECT_EQ(stats.misses, 1u);
  EXPECT_EQ(stats.bytes, 8 * sizeof(float));
  EXPECT_EQ(stats.entries, 1u);
}

TEST(PleCacheTest, NeverExceedsItsByteBoundAndEvictsLeastRecent) {
  PleCache cache(8, 3 * 8 * sizeof(float));  // room for 3 vectors
  std::vector<float> out(8);
  for (int32_t token = 0; token < 3; ++token) cache.Insert(token, VectorOf(token, 8).data());
  ASSERT_TRUE(cache.Lookup(0, out.data()));  // 0 becomes most recent; 1 is now the oldest
  cache.Insert(3, VectorOf(3, 8).data());
  EXPECT_LE(cache.stats().bytes, cache.max_bytes());
  EXPECT_FALSE(cache.Lookup(1, out.data()));
  EXPECT_TRUE(cache.Lookup(0, out.data()));
  EXPECT_TRUE(cache.Lookup(3, out.data()));
  EXPECT_EQ(cache.stats().evictions, 1u);
}

TEST(PleCacheTest, ZeroBytesDisablesCaching) {
  PleCache cache(8, 0);
  std::vector<float> out(8);
  cache.Insert(1, VectorOf(1, 8).data());
  EXPECT_FALSE(cache.Lookup(1, out.data()));
  EXPECT_EQ(cache.stats().bytes, 0u);
}

// Run under TSan in CI: readers and writers of overlapping tokens.
TEST(PleCacheTest, ConcurrentUseStaysConsistentAndBounded) {
  constexpr int64_t kFloats = 16;
  PleCache cache(kFloats, 50 * kFloats * sizeof(float));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, t] {
      std::vector<float> out(kFloats);
      for (int i = 0; i < 2000; ++i) {
        const int32_t token = (i * 7 + t * 13) % 97;
        if (cache.Lookup(token, out.data())) {
          EXPECT_EQ(out, VectorOf(token, kFloats));
        } else {
          cache.Insert(token, VectorOf(token, kFloats).data());
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const PleCache::Stats stats = cache.stats();
  EXPECT_LE(stats.bytes, cache.max_bytes());
  EXPECT_EQ(stats.hits + stats.misses, 8000u);
}

}  // namespace
}  // namespace matformer
