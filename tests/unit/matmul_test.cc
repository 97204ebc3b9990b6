#include "core/kernels/matmul.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/kernels/small_m_bf16.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace matformer {
namespace {

using kernels_internal::kSmallMMaxRows;
using ::testing::FloatNear;
using ::testing::HasSubstr;
using ::testing::Pointwise;

uint16_t ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

float FromBf16(uint16_t h) {
  const uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// A weight tensor [rows, cols] held by the test, with its values as the
// engine sees them (bf16-rounded for bf16) for the reference.
struct Weights {
  DType dtype;
  int64_t rows;
  int64_t cols;
  std::vector<float> values;
  std::vector<std::byte> bytes;

  TensorView View(const std::string& name) const {
    TensorView view;
    view.name = name;
    view.dtype = dtype;
    view.shape = {rows, cols};
    view.data = bytes.data();
    view.nbytes = bytes.size();
    return view;
  }
};

Weights RandomWeights(DType dtype, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Weights w{dtype, rows, cols, std::vector<float>(rows * cols), {}};
  if (dtype == DType::kBF16) {
    std::vector<uint16_t> raw(rows * cols);
    for (size_t i = 0; i < raw.size(); ++i) {
      raw[i] = ToBf16(dist(rng));
      w.values[i] = FromBf16(raw[i]);
    }
    w.bytes.resize(raw.size() * sizeof(uint16_t));
    std::memcpy(w.bytes.data(), raw.data(), w.bytes.size());
  } else {
    for (float& v : w.values) v = dist(rng);
    w.bytes.resize(w.values.size() * sizeof(float));
    std::memcpy(w.bytes.data(), w.values.data(), w.bytes.size());
  }
  return w;
}

std::vector<float> RandomVector(size_t size, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<float> v(size);
  for (float& f : v) f = dist(rng);
  return v;
}

struct Case {
  DType dtype;
  int64_t rows, cols;      // source tensor
  int64_t n0, n1, k0, k1;  // packed block
  int64_t m;
  int64_t ldx_pad, ldy_pad;  // extra elements per row of x and y
  bool accumulate;
};

std::string CaseName(const Case& c) {
  return absl::StrCat(c.dtype == DType::kBF16 ? "bf16" : "f32", "_w", c.rows, "x", c.cols, "_n",
                      c.n0, "to", c.n1, "_k", c.k0, "to", c.k1, "_m", c.m, "_ldxpad", c.ldx_pad,
                      "_ldypad", c.ldy_pad, c.accumulate ? "_acc" : "");
}

// Runs MatMul for the case and checks every output against a double-precision
// sum over the inputs as the engine sees them (x rounded to bf16 for bf16
// weights). The tolerance is 1e-4 of sum |x||w| (plus |y0| when accumulating):
// f32 accumulation of k terms errs by at most about k * 2^-24 of that sum,
// below 1e-4 for the k <= 1000 used here; a wrong index or layout errs by O(1).
void CheckCase(const Case& c) {
  SCOPED_TRACE(CaseName(c));
  std::mt19937 rng(static_cast<uint32_t>(c.rows * 131 + c.cols * 7 + c.m));
  const Weights w = RandomWeights(c.dtype, c.rows, c.cols, rng);
  absl::StatusOr<PackedMatrix> packed = PackedMatrix::Pack(w.View("w"), c.n0, c.n1, c.k0, c.k1);
  ASSERT_TRUE(packed.ok()) << packed.status();
  const int64_t n = c.n1 - c.n0;
  const int64_t k = c.k1 - c.k0;
  ASSERT_EQ(packed->n(), n);
  ASSERT_EQ(packed->k(), k);
  ASSERT_EQ(packed->dtype(), c.dtype);
  ASSERT_GE(packed->bytes(), static_cast<size_t>(n * k) * (c.dtype == DType::kBF16 ? 2 : 4));

  const int64_t ldx = k + c.ldx_pad;
  const int64_t ldy = n + c.ldy_pad;
  const std::vector<float> x = RandomVector(std::max<int64_t>(c.m, 1) * ldx, rng);
  const std::vector<float> y0 = RandomVector(std::max<int64_t>(c.m, 1) * ldy, rng);
  std::vector<float> y = y0;
  MatMul(x.data(), c.m, ldx, *packed, y.data(), ldy, c.accumulate);

  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = c.accumulate ? y0[i * ldy + j] : 0.0;
      double magnitude = c.accumulate ? std::abs(y0[i * ldy + j]) : 0.0;
      for (int64_t l = 0; l < k; ++l) {
        float xv = x[i * ldx + l];
        if (c.dtype == DType::kBF16) xv = FromBf16(ToBf16(xv));
        const double wv = w.values[(c.n0 + j) * c.cols + c.k0 + l];
        sum += xv * wv;
        magnitude += std::abs(xv * wv);
      }
      ASSERT_NEAR(y[i * ldy + j], sum, 1e-4 * magnitude + 1e-30) << "at row " << i << " col " << j;
    }
    // Padding between rows of y is not written.
    for (int64_t j = n; j < ldy; ++j) ASSERT_EQ(y[i * ldy + j], y0[i * ldy + j]);
  }
  // Rows past m are not written.
  for (size_t i = c.m * ldy; i < y.size(); ++i) ASSERT_EQ(y[i], y0[i]);
}

class MatMulTest : public ::testing::TestWithParam<DType> {};

TEST_P(MatMulTest, MatchesReferenceAcrossShapesAndRowCounts) {
  const DType dtype = GetParam();
  struct Shape {
    int64_t rows, cols, n0, n1, k0, k1;
  };
  // Whole tensors with and without multiples of the 64 x 32 packing blocks,
  // odd k, a single column, and sub-blocks that start inside the tensor.
  const Shape shapes[] = {
      {200, 72, 0, 200, 0, 72}, {128, 64, 0, 128, 0, 64},    {70, 37, 0, 70, 0, 37},
      {1, 1, 0, 1, 0, 1},       {300, 160, 45, 245, 0, 160}, {96, 500, 0, 96, 13, 430},
      {260, 90, 17, 80, 5, 88},
  };
  for (const Shape& s : shapes) {
    // Rows run in pieces of at most 256. With AMX (ctest also runs these
    // tests with MATFORMER_DISABLE_AMX=1) pieces of 4 rows and more run on
    // the AMX kernel, 16 rows per tile: 17 and 77 end in a partial tile, 333
    // is 256 + 77. Without AMX up to kSmallMMaxRows (64) rows run on the
    // AVX-512 kernel, more on oneDNN: 77 pads to 80 rows through a scratch
    // y, 260 is a 256-row oneDNN piece (written directly when y is dense) and
    // a 4-row kernel piece, 300 is 256 + 44, 333 is 256 + 77 padded.
    for (int64_t m : {0, 1, 3, 8, 17, 64, 77, 260, 300, 333}) {
      for (bool accumulate : {false, true}) {
        CheckCase({dtype, s.rows, s.cols, s.n0, s.n1, s.k0, s.k1, m, 0, 0, accumulate});
        CheckCase({dtype, s.rows, s.cols, s.n0, s.n1, s.k0, s.k1, m, 5, 11, accumulate});
        if (HasFailure()) return;
      }
    }
  }
}

TEST_P(MatMulTest, LongOddK) {
  // k = 2501: the small-M kernel walks it in many chunks when it has several
  // row tiles (y carries the partial sums) and in one pass for a single tile;
  // the last, odd k is paired with zero padding. 100 rows run on oneDNN.
  for (int64_t m : {1, 7, 16, 40, 100}) {
    CheckCase({GetParam(), 90, 2600, 3, 83, 50, 2551, m, 3, 2, false});
    CheckCase({GetParam(), 90, 2600, 3, 83, 50, 2551, m, 0, 0, true});
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, MatMulTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) {
                           return std::string(info.param == DType::kBF16 ? "BF16" : "F32");
                         });

// The kernels read the same packed buffer; row counts on either side of the
// thresholds must agree with each other row by row (with AMX: 131 rows run
// as 64 + 64 + 3 on AMX, AMX and AVX-512 against 131 on AMX; without: on
// AVX-512 against 128 on oneDNN and 3 on AVX-512).
TEST(MatMulBf16Test, SmallMKernelAndOnednnAgree) {
  if (!__builtin_cpu_supports("avx512bf16")) {
    GTEST_SKIP() << "no AVX512_BF16: every row count runs on oneDNN";
  }
  std::mt19937 rng(7);
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{200, 72}, {384, 1536}, {1000, 33}}) {
    SCOPED_TRACE(absl::StrCat(rows, "x", cols));
    const Weights w = RandomWeights(DType::kBF16, rows, cols, rng);
    absl::StatusOr<PackedMatrix> packed = PackedMatrix::PackAll(w.View("w"));
    ASSERT_TRUE(packed.ok()) << packed.status();
    const int64_t m = 2 * kSmallMMaxRows + 3;
    const std::vector<float> x = RandomVector(m * cols, rng);
    std::vector<float> big(m * rows);
    MatMul(x.data(), m, cols, *packed, big.data(), rows, false);
    std::vector<float> small(m * rows);
    for (int64_t i = 0; i < m; i += kSmallMMaxRows) {
      MatMul(x.data() + i * cols, std::min(kSmallMMaxRows, m - i), cols, *packed,
             small.data() + i * rows, rows, false);
    }
    for (int64_t i = 0; i < m * rows; ++i) {
      double magnitude = 0;
      for (int64_t l = 0; l < cols; ++l) {
        magnitude +=
            std::abs(FromBf16(ToBf16(x[i / rows * cols + l])) * w.values[(i % rows) * cols + l]);
      }
      ASSERT_NEAR(small[i], big[i], 1e-4 * magnitude) << "row " << i / rows << " col " << i % rows;
    }
  }
}

// The bf16 copy of x lives in a per-thread scratch buffer that the kernels
// read in whole 32-column blocks (AMX): a previous call's infinities past the
// next call's odd k must not meet its zero-padded weights (Inf x 0 = NaN).
TEST(MatMulBf16Test, StaleScratchPastOddKDoesNotLeak) {
  std::mt19937 rng(13);
  const Weights wide = RandomWeights(DType::kBF16, 64, 64, rng);
  const Weights odd = RandomWeights(DType::kBF16, 64, 33, rng);
  absl::StatusOr<PackedMatrix> packed_wide = PackedMatrix::PackAll(wide.View("wide"));
  absl::StatusOr<PackedMatrix> packed_odd = PackedMatrix::PackAll(odd.View("odd"));
  ASSERT_TRUE(packed_wide.ok()) << packed_wide.status();
  ASSERT_TRUE(packed_odd.ok()) << packed_odd.status();
  const int64_t m = 16;
  const std::vector<float> infinities(m * 64, INFINITY);
  std::vector<float> y(m * 64);
  MatMul(infinities.data(), m, 64, *packed_wide, y.data(), 64, false);
  const std::vector<float> x = RandomVector(m * 33, rng);
  MatMul(x.data(), m, 33, *packed_odd, y.data(), 64, false);
  for (int64_t i = 0; i < m * 64; ++i) ASSERT_TRUE(std::isfinite(y[i])) << "element " << i;
}

// With identity weights y is x as rounded to bf16, exactly: ties go to even on
// both paths, including the columns past the last full vector.
TEST(MatMulBf16Test, RoundsXToNearestEven) {
  const int64_t k = 45;
  Weights w{DType::kBF16, k, k, std::vector<float>(k * k), std::vector<std::byte>(k * k * 2)};
  for (int64_t i = 0; i < k; ++i) {
    const uint16_t one = ToBf16(1.0f);
    std::memcpy(w.bytes.data() + (i * k + i) * 2, &one, 2);
  }
  absl::StatusOr<PackedMatrix> packed = PackedMatrix::PackAll(w.View("identity"));
  ASSERT_TRUE(packed.ok()) << packed.status();
  std::mt19937 rng(5);
  for (int64_t m : {int64_t{3}, kSmallMMaxRows + 24}) {
    std::vector<float> x = RandomVector(m * k, rng);
    // Halfway cases: 1 + 2^-8 rounds down to 1, 1 + 3 * 2^-8 up to 1 + 2^-6.
    x[0] = 1.0f + 0x1p-8f;
    x[1] = -(1.0f + 3 * 0x1p-8f);
    x[k - 1] = 3.0f * (1.0f + 0x1p-8f);
    x[m * k - 1] = 1.0f + 3 * 0x1p-8f;
    std::vector<float> y(m * k);
    MatMul(x.data(), m, k, *packed, y.data(), k, false);
    for (int64_t i = 0; i < m * k; ++i) {
      ASSERT_EQ(y[i], FromBf16(ToBf16(x[i]))) << "m " << m << " element " << i << " x " << x[i];
    }
  }
}

TEST(MatMulBf16Test, ConcurrentCallersGetCorrectResults) {
  std::mt19937 rng(11);
  const Weights w = RandomWeights(DType::kBF16, 192, 256, rng);
  absl::StatusOr<PackedMatrix> packed = PackedMatrix::PackAll(w.View("w"));
  ASSERT_TRUE(packed.ok()) << packed.status();
  const int64_t m = kSmallMMaxRows + 36;
  const std::vector<float> x = RandomVector(m * 256, rng);
  std::vector<float> expected(m * 192);
  MatMul(x.data(), m, 256, *packed, expected.data(), 192, false);
  std::vector<std::vector<float>> results(4, std::vector<float>(m * 192));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      // Alternate row counts so that both paths run concurrently.
      for (int rep = 0; rep < 20; ++rep) {
        const int64_t rows = (t + rep) % 2 == 0 ? m : 5;
        MatMul(x.data(), rows, 256, *packed, results[t].data(), 192, false);
      }
      MatMul(x.data(), m, 256, *packed, results[t].data(), 192, false);
    });
  }
  for (std::thread& thread : threads) thread.join();
  // Not bitwise: oneDNN may split work differently when callers compete for cores.
  for (const std::vector<float>& result : results) {
    EXPECT_THAT(result, Pointwise(FloatNear(1e-3f), expected));
  }
}

// Nested row slabs (the FFN's gate and up) through PackSlabs and
// MatMulNestedRowSlabs give, row by row, exactly what the whole matrix gives
// for the slabs a row runs: for bf16 slabs on 64-row blocks (one shared
// buffer, adjacent slabs merged into one call), for bf16 slabs off the blocks
// and for f32 (separate buffers, one call per slab); at small-M and oneDNN
// row counts.
TEST(MatMulSlabsTest, NestedRowSlabsMatchTheWholeMatrix) {
  struct SlabCase {
    DType dtype;
    std::vector<int64_t> ends;
    std::vector<int64_t> slab_rows;
  };
  const std::vector<SlabCase> cases = {
      {DType::kBF16, {64, 128, 256, 448}, {9, 9, 9, 9}},          // all merged
      {DType::kBF16, {64, 128, 256, 448}, {9, 9, 5, 2}},          // merged, then single slabs
      {DType::kBF16, {64, 128, 256, 448}, {80, 80, 80, 70}},      // oneDNN rows
      {DType::kBF16, {100, 128, 256, 448}, {9, 9, 9, 9}},         // off the 64-row blocks
      {DType::kBF16, {64, 128, 256, 448}, {9, 4, 0, 0}},          // the widest slabs unused
      {DType::kF32, {64, 128, 256, 448}, {9, 9, 5, 2}},
  };
  constexpr int64_t kCols = 96;
  for (const SlabCase& c : cases) {
    SCOPED_TRACE(absl::StrCat(c.dtype == DType::kBF16 ? "bf16" : "f32", " first end ", c.ends[0], " rows ",
                              c.slab_rows[0], ",", c.slab_rows[1], ",", c.slab_rows[2], ",", c.slab_rows[3]));
    std::mt19937 rng(11);
    const Weights w = RandomWeights(c.dtype, c.ends.back(), kCols, rng);
    absl::StatusOr<std::vector<PackedMatrix>> slabs = PackedMatrix::PackSlabs(w.View("gate"), c.ends, true);
    ASSERT_TRUE(slabs.ok()) << slabs.status();
    absl::StatusOr<PackedMatrix> whole = PackedMatrix::PackAll(w.View("gate"));
    ASSERT_TRUE(whole.ok()) << whole.status();
    const int64_t m = c.slab_rows[0], n = c.ends.back();
    const std::vector<float> x = RandomVector(m * kCols, rng);
    std::vector<float> y(m * n, NAN), expected(m * n);
    MatMulNestedRowSlabs(x.data(), kCols, c.slab_rows, *slabs, y.data(), n);
    MatMul(x.data(), m, kCols, *whole, expected.data(), n, false);
    for (int64_t i = 0; i < m; ++i) {
      int64_t width = 0;  // the columns row i runs
      for (size_t j = 0; j < c.ends.size(); ++j) {
        if (i < c.slab_rows[j]) width = c.ends[j];
      }
      for (int64_t col = 0; col < n; ++col) {
        if (col < width) {
          ASSERT_NEAR(y[i * n + col], expected[i * n + col], 1e-4 * std::abs(expected[i * n + col]) + 1e-4)
              << "row " << i << " col " << col;
        }
      }
    }
  }
}

TEST(PackedMatrixTest, InvalidArgumentsNameTheTensor) {
  std::mt19937 rng(3);
  const Weights w = RandomWeights(DType::kBF16, 10, 20, rng);
  const TensorView view = w.View("layers.0.mlp.up_proj.weight");
  struct Bad {
    int64_t n0, n1, k0, k1;
    const char* limit;
  };
  for (const Bad& bad :
       {Bad{0, 11, 0, 20, "[0, 10)"}, Bad{-1, 5, 0, 20, "[0, 10)"}, Bad{4, 4, 0, 20, "[0, 10)"},
        Bad{0, 10, 0, 21, "[0, 20)"}, Bad{0, 10, 7, 3, "[0, 20)"}}) {
    absl::StatusOr<PackedMatrix> packed = PackedMatrix::Pack(view, bad.n0, bad.n1, bad.k0, bad.k1);
    ASSERT_FALSE(packed.ok());
    EXPECT_EQ(packed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(packed.status().message(), HasSubstr("layers.0.mlp.up_proj.weight"));
    EXPECT_THAT(packed.status().message(), HasSubstr(bad.limit));
  }

  TensorView one_d = view;
  one_d.shape = {200};
  absl::StatusOr<PackedMatrix> packed = PackedMatrix::PackAll(one_d);
  EXPECT_EQ(packed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(packed.status().message(), HasSubstr("layers.0.mlp.up_proj.weight"));

  TensorView empty = view;
  empty.shape = {0, 20};
  packed = PackedMatrix::PackAll(empty);
  EXPECT_EQ(packed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(packed.status().message(), HasSubstr("layers.0.mlp.up_proj.weight"));

  TensorView short_data = view;
  short_data.nbytes = 100;
  packed = PackedMatrix::PackAll(short_data);
  EXPECT_EQ(packed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(packed.status().message(), HasSubstr("layers.0.mlp.up_proj.weight"));
}

}  // namespace
}  // namespace matformer
