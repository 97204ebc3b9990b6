#include "core/kernels/ops.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace matformer {
namespace {

double Reference(Activation activation, double v) {
  if (activation == Activation::kSilu) return v / (1.0 + std::exp(-v));
  return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
}

// Every length from 0 to 40 (whole vectors and masked tails) and a long row;
// inputs span the saturating ends of both activations. Elements past n stay.
TEST(OpsTest, ActivateAndMultiplyMatchesTheFormulaForEveryTail) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-12.0f, 12.0f);
  for (Activation activation : {Activation::kGeluTanh, Activation::kSilu}) {
    for (int64_t n : {0, 1, 7, 8, 9, 15, 16, 17, 23, 31, 33, 40, 1000}) {
      std::vector<float> x(n + 8), other(n + 8);
      for (float& v : x) v = dist(rng);
      for (float& v : other) v = dist(rng);
      const std::vector<float> before = x;
      ActivateAndMultiply(activation, x.data(), other.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double expected = Reference(activation, before[i]) * other[i];
        ASSERT_NEAR(x[i], expected, 1e-5 * std::abs(expected) + 1e-6) << "n " << n << " element " << i;
      }
      for (int64_t i = n; i < n + 8; ++i) ASSERT_EQ(x[i], before[i]) << "n " << n << " wrote past the end";
    }
  }
}

}  // namespace
}  // namespace matformer
