#include "core/model/submodel.h"

#include "gtest/gtest.h"
#include "tests/unit/test_model.h"

namespace matformer {
namespace {

// Four layers and small widths, so that names and parameter counts are easy to check by hand.
ModelConfig SmallConfig() {
  ModelConfig c = testing::TinyConfig(DType::kF32);
  c.hidden_size = 16;
  c.intermediate_size = 64;
  c.num_layers = 4;
  c.granularities = {8, 16, 32, 64};
  return c;
}

TEST(SubmodelSpecTest, CanonicalNamesRoundTrip) {
  const ModelConfig c = SmallConfig();
  for (const char* name : {"S", "XL", "S-S-M-L", "S-skip-M-XL", "skip-M-M-M"}) {
    absl::StatusOr<SubmodelSpec> spec = SubmodelSpec::Parse(c, name);
    ASSERT_TRUE(spec.ok()) << name << ": " << spec.status();
    EXPECT_EQ(spec->name(), name);
  }
  absl::StatusOr<SubmodelSpec> by_width = SubmodelSpec::Parse(c, "8-8-16-32");
  ASSERT_TRUE(by_width.ok());
  EXPECT_EQ(by_width->name(), "S-S-M-L");
  EXPECT_EQ(SubmodelSpec::Parse(c, "M-M-M-M")->name(), "M");
}

TEST(SubmodelSpecTest, HashIsStableAcrossRuns) {
  const ModelConfig c = SmallConfig();
  // FNV-1a 64 of "XL": a fixed value so that a hash logged today matches tomorrow.
  EXPECT_EQ(SubmodelSpec::Parse(c, "XL")->hash(), 0x095d5c07b5e92011ULL);
  EXPECT_NE(SubmodelSpec::Parse(c, "S")->hash(), SubmodelSpec::Parse(c, "XL")->hash());
}

TEST(SubmodelSpecTest, ActiveParamsGrowWithWidthAndShrinkWithSkips) {
  const ModelConfig c = SmallConfig();
  const int64_t s = SubmodelSpec::Parse(c, "S")->active_params();
  const int64_t m = SubmodelSpec::Parse(c, "M")->active_params();
  const int64_t xl = SubmodelSpec::Parse(c, "XL")->active_params();
  EXPECT_LT(s, m);
  EXPECT_LT(m, xl);
  // Each layer moving S -> M adds 3 * d * (16 - 8) FFN parameters.
  EXPECT_EQ(m - s, 4 * 3 * 16 * 8);
  EXPECT_EQ(xl - SubmodelSpec::Parse(c, "XL-XL-skip-XL")->active_params(), LayerActiveParams(c, 64));
}

TEST(SubmodelSpecTest, InvalidSpecsAreClearErrors) {
  const ModelConfig c = SmallConfig();
  EXPECT_EQ(SubmodelSpec::Parse(c, "XXL").status().message(),
            "spec: unknown granularity 'XXL' (expected one of S, M, L, XL or a width in 8, 16, 32, 64)");
  EXPECT_EQ(SubmodelSpec::Parse(c, "S-M").status().message(), "spec: 'S-M' names 2 layers, the model has 4");
  EXPECT_EQ(SubmodelSpec::Parse(c, "skip-skip-skip-skip").status().message(),
            "spec: every layer is skipped; at least one must run");
  EXPECT_EQ(SubmodelSpec::Create(c, {8, 8, 8, 12}, {}).status().message(),
            "spec: layer 3 width 12 is not a granularity of the model (8, 16, 32, 64)");
  EXPECT_EQ(SubmodelSpec::Create(c, {8, 8, 8, 8}, {4}).status().message(),
            "spec: skipped layer 4 out of range [0, 4)");
  EXPECT_EQ(SubmodelSpec::Create(c, {8, 8, 8, 8}, {1, 1}).status().message(), "spec: layer 1 skipped twice");
  EXPECT_FALSE(SubmodelSpec::Parse(c, "").ok());
}

TEST(SubmodelSpecTest, NonDecreasingIgnoresSkippedLayers) {
  const ModelConfig c = SmallConfig();
  EXPECT_TRUE(SubmodelSpec::Parse(c, "S-M-skip-XL")->NonDecreasing());
  EXPECT_FALSE(SubmodelSpec::Parse(c, "M-S-L-XL")->NonDecreasing());
}

}  // namespace
}  // namespace matformer
