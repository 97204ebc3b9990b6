#include "core/sampler.h"

#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace matformer {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, -1.0f, 2.5f};

TEST(SamplerTest, GreedyPicksTheArgmax) {
  Sampler sampler({});
  EXPECT_EQ(sampler.Sample(kLogits), 1);
}

TEST(SamplerTest, SameSeedSameTokens) {
  const SamplingParams params{.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 42};
  Sampler a(params), b(params), c({.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 43});
  std::vector<int32_t> from_a, from_b, from_c;
  for (int i = 0; i < 64; ++i) {
    from_a.push_back(a.Sample(kLogits));
    from_b.push_back(b.Sample(kLogits));
    from_c.push_back(c.Sample(kLogits));
  }
  EXPECT_EQ(from_a, from_b);
  EXPECT_NE(from_a, from_c);
}

TEST(SamplerTest, TopKOnlyReturnsTheKBest) {
  Sampler sampler({.temperature = 5.0f, .top_k = 2, .top_p = 1.0f, .seed = 1});
  for (int i = 0; i < 200; ++i) {
    const int32_t token = sampler.Sample(kLogits);
    EXPECT_TRUE(token == 1 || token == 4) << token;
  }
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // Probabilities at temperature 1: token 0 ~0.84, token 1 ~0.11, token 2 ~0.04.
  const std::vector<float> logits = {4.0f, 2.0f, 1.0f};
  Sampler sampler({.temperature = 1.0f, .top_k = 0, .top_p = 0.8f, .seed = 7});
  for (int i = 0; i < 200; ++i) EXPECT_EQ(sampler.Sample(logits), 0);
}

TEST(SamplerTest, FrequenciesFollowTheSoftmax) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
  Sampler sampler({.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 3});
  int ones = 0;
  for (int i = 0; i < 20000; ++i) ones += sampler.Sample(logits);
  EXPECT_NEAR(ones / 20000.0, 0.75, 0.02);
}

TEST(SamplerTest, ValidationNamesTheFieldAndLimit) {
  EXPECT_TRUE(ValidateSamplingParams({}, 10).ok());
  const auto message = [](const SamplingParams& p) { return std::string(ValidateSamplingParams(p, 10).message()); };
  EXPECT_EQ(message({.temperature = -1.0f}), "temperature = -1 outside [0, 100]");
  EXPECT_NE(message({.temperature = std::numeric_limits<float>::quiet_NaN()}).find("temperature"), std::string::npos);
  EXPECT_EQ(message({.top_k = 11}), "top_k = 11 outside [0, 10]");
  EXPECT_EQ(message({.top_p = 0.0f}), "top_p = 0 outside (0, 1]");
  EXPECT_NE(message({.top_p = std::numeric_limits<float>::infinity()}).find("top_p"), std::string::npos);
}

TEST(SamplerTest, LogProbabilityIsNormalised) {
  double total = 0.0;
  for (int32_t token = 0; token < static_cast<int32_t>(kLogits.size()); ++token) {
    total += std::exp(LogProbability(kLogits, token));
  }
  EXPECT_NEAR(total, 1.0, 1e-9);
}

TEST(StopMatcherTest, FindsTheEarliestStopAndHoldsBackPrefixes) {
  StopMatcher matcher({"\n\n", "END", ""});
  EXPECT_EQ(matcher.Find("abc END x\n\n"), 4u);
  EXPECT_EQ(matcher.Find("nothing here"), std::string::npos);
  EXPECT_EQ(matcher.PendingSuffix("text E"), 1u);
  EXPECT_EQ(matcher.PendingSuffix("text EN"), 2u);
  EXPECT_EQ(matcher.PendingSuffix("text\n"), 1u);
  EXPECT_EQ(matcher.PendingSuffix("text"), 0u);
}

}  // namespace
}  // namespace matformer
