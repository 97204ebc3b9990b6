#include "core/model/safetensors.h"

#include <sys/stat.h>

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace matformer {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// gMock matchers take std::string, this Abseil's string_view is its own type.
std::string Message(const absl::Status& status) { return std::string(status.message()); }

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "safetensors_test_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string WriteRaw(const std::string& name, const std::string& bytes) const {
    const std::string path = Path(name);
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  // A safetensors file with `header` as its JSON text and `data_size` zero
  // bytes of data.
  std::string WriteWithHeader(const std::string& name, const std::string& header, size_t data_size) const {
    std::string bytes(8, '\0');
    const uint64_t length = header.size();
    std::memcpy(bytes.data(), &length, 8);
    bytes += header;
    bytes.append(data_size, '\0');
    return WriteRaw(name, bytes);
  }

  // Expects Open to fail with `code` and a message naming the file and containing `detail`.
  void ExpectOpenError(const std::string& path, absl::StatusCode code, const std::string& detail) const {
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << path;
    EXPECT_EQ(file.status().code(), code) << file.status();
    EXPECT_THAT(Message(file.status()), HasSubstr(path));
    EXPECT_THAT(Message(file.status()), HasSubstr(detail));
  }

  std::string dir_;
};

std::vector<std::byte> F32Bytes(const std::vector<float>& values) {
  std::vector<std::byte> bytes(values.size() * 4);
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

std::vector<std::byte> Bf16Bytes(const std::vector<uint16_t>& bits) {
  std::vector<std::byte> bytes(bits.size() * 2);
  std::memcpy(bytes.data(), bits.data(), bytes.size());
  return bytes;
}

uint16_t Bf16Bits(float value) { return static_cast<uint16_t>(std::bit_cast<uint32_t>(value) >> 16); }

TEST_F(SafetensorsTest, RoundTripF32AndBf16) {
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 0.0f, -0.125f, 1e-3f};
  // Values exactly representable in bf16 so that the round trip is exact.
  const std::vector<float> bf16 = {1.0f, -3.0f, 0.5f, 256.0f, -0.015625f, 7.0f};
  std::vector<uint16_t> bf16_bits;
  for (float v : bf16) bf16_bits.push_back(Bf16Bits(v));

  const std::vector<TensorToWrite> tensors = {
      {"z.f32", DType::kF32, {2, 3}, F32Bytes(f32)},
      {"a.bf16", DType::kBF16, {3, 2}, Bf16Bytes(bf16_bits)},
      {"m.norm", DType::kF32, {3}, F32Bytes({4.0f, 5.0f, 6.0f})},
      {"e.empty", DType::kBF16, {0, 4}, {}},
  };
  const std::string path = Path("model.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_THAT((*file)->Names(), ElementsAre("a.bf16", "e.empty", "m.norm", "z.f32"));
  EXPECT_TRUE((*file)->Contains("m.norm"));
  EXPECT_FALSE((*file)->Contains("nope"));

  auto z = (*file)->Get("z.f32");
  ASSERT_TRUE(z.ok()) << z.status();
  EXPECT_EQ(z->name, "z.f32");
  EXPECT_EQ(z->dtype, DType::kF32);
  EXPECT_THAT(z->shape, ElementsAre(2, 3));
  EXPECT_EQ(z->num_elements(), 6);
  EXPECT_EQ(z->nbytes, 24u);
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 3; ++c) EXPECT_EQ(z->At(r, c), f32[r * 3 + c]);
  }
  float row[3];
  z->RowToF32(1, row);
  EXPECT_THAT(row, ElementsAre(0.0f, -0.125f, 1e-3f));

  auto a = (*file)->Get("a.bf16");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->dtype, DType::kBF16);
  EXPECT_THAT(a->shape, ElementsAre(3, 2));
  EXPECT_EQ(a->nbytes, 12u);
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 2; ++c) EXPECT_EQ(a->At(r, c), bf16[r * 2 + c]);
  }
  float bf16_row[2];
  a->RowToF32(2, bf16_row);
  EXPECT_THAT(bf16_row, ElementsAre(-0.015625f, 7.0f));
  EXPECT_EQ(std::memcmp(a->data, bf16_bits.data(), 12), 0);

  auto norm = (*file)->Get("m.norm");
  ASSERT_TRUE(norm.ok());
  float norm_values[3];
  norm->RowToF32(0, norm_values);
  EXPECT_THAT(norm_values, ElementsAre(4.0f, 5.0f, 6.0f));

  auto empty = (*file)->Get("e.empty");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->num_elements(), 0);
  EXPECT_EQ(empty->nbytes, 0u);
}

TEST_F(SafetensorsTest, WrittenLayoutIsPaddedAndContiguous) {
  const std::vector<TensorToWrite> tensors = {
      {"b", DType::kBF16, {3}, Bf16Bytes({1, 2, 3})},
      {"a", DType::kF32, {1}, F32Bytes({1.0f})},
  };
  const std::string path = Path("layout.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ(header_size % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + header_size + 4 + 6);
  const std::string header = bytes.substr(8, header_size);
  // JSON, then only spaces.
  const size_t json_end = header.find_last_of('}') + 1;
  EXPECT_EQ(header.substr(json_end), std::string(header.size() - json_end, ' '));
  // Sorted by name, data in the same order without gaps.
  EXPECT_LT(header.find("\"a\""), header.find("\"b\""));
  EXPECT_THAT(header, HasSubstr("\"data_offsets\":[0,4]"));
  EXPECT_THAT(header, HasSubstr("\"data_offsets\":[4,10]"));
  // No temporary file is left behind.
  struct stat info;
  EXPECT_NE(stat((path + ".tmp").c_str(), &info), 0);
}

TEST_F(SafetensorsTest, Bf16IsTheUpperHalfOfF32) {
  const std::string path = Path("bits.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(path, {{"t", DType::kBF16, {1, 3}, Bf16Bytes({0x3F80, 0xC040, 0x7F80})}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto t = (*file)->Get("t");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->At(0, 0), 1.0f);
  EXPECT_EQ(t->At(0, 1), -3.0f);
  EXPECT_EQ(t->At(0, 2), std::numeric_limits<float>::infinity());
}

TEST_F(SafetensorsTest, UnalignedDataIsReadCorrectly) {
  // Other writers need not pad the header, so F32 data may be misaligned.
  const std::string header = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_NE((8 + header.size()) % 4, 0u);
  std::string bytes(8, '\0');
  const uint64_t length = header.size();
  std::memcpy(bytes.data(), &length, 8);
  bytes += header;
  const float values[2] = {2.5f, -7.0f};
  bytes.append(reinterpret_cast<const char*>(values), 8);
  auto file = SafetensorsFile::Open(WriteRaw("unaligned.safetensors", bytes));
  ASSERT_TRUE(file.ok()) << file.status();
  auto t = (*file)->Get("t");
  ASSERT_TRUE(t.ok());
  float out[2];
  t->RowToF32(0, out);
  EXPECT_THAT(out, ElementsAre(2.5f, -7.0f));
  EXPECT_EQ(t->At(0, 1), -7.0f);
}

TEST_F(SafetensorsTest, MetadataIsIgnoredButChecked) {
  const std::string tensor = R"("t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  auto ok = SafetensorsFile::Open(
      WriteWithHeader("meta.safetensors", "{\"__metadata__\":{\"format\":\"pt\"}," + tensor + "}", 4));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_THAT((*ok)->Names(), ElementsAre("t"));

  ExpectOpenError(WriteWithHeader("meta_value.safetensors", "{\"__metadata__\":{\"n\":1}," + tensor + "}", 4),
                  absl::StatusCode::kInvalidArgument, "__metadata__ 'n' must be a string");
  ExpectOpenError(WriteWithHeader("meta_type.safetensors", "{\"__metadata__\":[]," + tensor + "}", 4),
                  absl::StatusCode::kInvalidArgument, "__metadata__ must be an object");
}

TEST_F(SafetensorsTest, GetMissingTensorIsNotFound) {
  const std::string path = Path("one.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"t", DType::kF32, {1}, F32Bytes({1.0f})}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto missing = (*file)->Get("model.norm.weight");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(missing.status()), HasSubstr("model.norm.weight"));
  EXPECT_THAT(Message(missing.status()), HasSubstr(path));
}

TEST_F(SafetensorsTest, MissingFile) {
  const std::string path = Path("absent.safetensors");
  ExpectOpenError(path, absl::StatusCode::kNotFound, "cannot open");
}

TEST_F(SafetensorsTest, EmptyFile) {
  ExpectOpenError(WriteRaw("empty.safetensors", ""), absl::StatusCode::kInvalidArgument, "is empty");
}

TEST_F(SafetensorsTest, Directory) {
  ExpectOpenError(dir_, absl::StatusCode::kInvalidArgument, "not a regular file");
}

TEST_F(SafetensorsTest, TruncatedInsideTheLength) {
  ExpectOpenError(WriteRaw("short.safetensors", std::string(5, '\x10')), absl::StatusCode::kDataLoss,
                  "too short");
}

TEST_F(SafetensorsTest, HeaderLengthLargerThanFile) {
  std::string bytes(8, '\0');
  const uint64_t length = 1000;
  std::memcpy(bytes.data(), &length, 8);
  bytes += "{}";
  ExpectOpenError(WriteRaw("long_header.safetensors", bytes), absl::StatusCode::kDataLoss,
                  "header length 1000 exceeds");
}

TEST_F(SafetensorsTest, HeaderLengthOutOfRange) {
  ExpectOpenError(WriteWithHeader("tiny_header.safetensors", "{", 8), absl::StatusCode::kInvalidArgument,
                  "header length 1 outside");
  std::string bytes(16, ' ');
  const uint64_t length = 1ull << 40;
  std::memcpy(bytes.data(), &length, 8);
  ExpectOpenError(WriteRaw("huge_header.safetensors", bytes), absl::StatusCode::kInvalidArgument,
                  "outside [2, 100000000]");
}

TEST_F(SafetensorsTest, HeaderNotJson) {
  ExpectOpenError(WriteWithHeader("not_json.safetensors", "{\"t\": not json}", 0),
                  absl::StatusCode::kInvalidArgument, "header is not valid JSON");
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  ExpectOpenError(WriteWithHeader("array.safetensors", "[1, 2, 3]", 0), absl::StatusCode::kInvalidArgument,
                  "header must be a JSON object");
}

struct BadTensor {
  const char* label;
  std::string entry;  // JSON of tensor "x"
  size_t data_size;
  const char* detail;
};

class SafetensorsBadTensorTest : public SafetensorsTest, public ::testing::WithParamInterface<BadTensor> {};

TEST_P(SafetensorsBadTensorTest, IsRejectedNamingTheTensor) {
  const BadTensor& bad = GetParam();
  const std::string path =
      WriteWithHeader(std::string(bad.label) + ".safetensors", "{\"x\":" + bad.entry + "}", bad.data_size);
  ExpectOpenError(path, absl::StatusCode::kInvalidArgument, "tensor 'x': ");
  ExpectOpenError(path, absl::StatusCode::kInvalidArgument, bad.detail);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SafetensorsBadTensorTest,
    ::testing::Values(
        BadTensor{"I64", R"({"dtype":"I64","shape":[2],"data_offsets":[0,16]})", 16,
                  "dtype I64 not supported (F32, BF16)"},
        BadTensor{"F16", R"({"dtype":"F16","shape":[2],"data_offsets":[0,4]})", 4, "dtype F16 not supported"},
        BadTensor{"DtypeNotString", R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})", 8, "dtype"},
        BadTensor{"NotObject", R"([1,2])", 8, "must be an object"},
        BadTensor{"UnknownKey", R"({"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1})", 4,
                  "unknown key 'x'"},
        BadTensor{"NegativeShape", R"({"dtype":"F32","shape":[2,-3],"data_offsets":[0,8]})", 8,
                  "non-negative"},
        BadTensor{"FloatShape", R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})", 8, "non-negative"},
        BadTensor{"ShapeNotArray", R"({"dtype":"F32","shape":4,"data_offsets":[0,16]})", 16, "shape"},
        BadTensor{"OverflowingShape",
                  R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})", 8, "overflows"},
        BadTensor{"OverflowingBytes", R"({"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]})",
                  8, "overflows"},
        BadTensor{"HugeDim", R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]})", 8,
                  "non-negative"},
        BadTensor{"OffsetsPastEnd", R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})", 12,
                  "not within the data section of 12 bytes"},
        BadTensor{"BeginAfterEnd", R"({"dtype":"F32","shape":[0],"data_offsets":[8,4]})", 12, "not within"},
        BadTensor{"SizeLie", R"({"dtype":"F32","shape":[2,2],"data_offsets":[0,12]})", 16,
                  "hold 12 bytes, shape [2,2] of F32 needs 16"},
        BadTensor{"Bf16SizeLie", R"({"dtype":"BF16","shape":[4],"data_offsets":[0,16]})", 16, "needs 8"},
        BadTensor{"OffsetsOneNumber", R"({"dtype":"F32","shape":[1],"data_offsets":[4]})", 4, "data_offsets"},
        BadTensor{"NegativeOffset", R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})", 4,
                  "data_offsets"},
        BadTensor{"MissingOffsets", R"({"dtype":"F32","shape":[1]})", 4, "data_offsets"}),
    [](const ::testing::TestParamInfo<BadTensor>& info) { return std::string(info.param.label); });

TEST_F(SafetensorsTest, OverlappingTensors) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                             R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  ExpectOpenError(WriteWithHeader("overlap.safetensors", header, 24), absl::StatusCode::kInvalidArgument,
                  "tensor 'b' bytes [8, 24) overlap tensor 'a' bytes [0, 16)");
}

TEST_F(SafetensorsTest, ContainedTensorOverlaps) {
  const std::string header = R"({"big":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},)"
                             R"("small":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},)"
                             R"("zero":{"dtype":"F32","shape":[0],"data_offsets":[12,12]}})";
  ExpectOpenError(WriteWithHeader("contained.safetensors", header, 32), absl::StatusCode::kInvalidArgument,
                  "overlap");
}

TEST_F(SafetensorsTest, AdjacentAndEmptyTensorsDoNotOverlap) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[8,16]},)"
                             R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})";
  auto file = SafetensorsFile::Open(WriteWithHeader("adjacent.safetensors", header, 16));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Names().size(), 3u);
}

TEST_F(SafetensorsTest, TruncatedData) {
  const std::string path = Path("cut.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"t", DType::kF32, {4}, F32Bytes({1, 2, 3, 4})}}).ok());
  struct stat info;
  ASSERT_EQ(stat(path.c_str(), &info), 0);
  ASSERT_EQ(truncate(path.c_str(), info.st_size - 3), 0);
  ExpectOpenError(path, absl::StatusCode::kInvalidArgument, "tensor 't': data_offsets [0, 16] not within");
}

TEST_F(SafetensorsTest, WriteRejectsInconsistentTensors) {
  const std::string path = Path("bad_write.safetensors");
  auto size_mismatch = WriteSafetensors(path, {{"t", DType::kF32, {3}, F32Bytes({1.0f, 2.0f})}});
  EXPECT_EQ(size_mismatch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(size_mismatch), HasSubstr("'t'"));

  auto duplicate = WriteSafetensors(
      path, {{"t", DType::kF32, {1}, F32Bytes({1.0f})}, {"t", DType::kF32, {1}, F32Bytes({2.0f})}});
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(duplicate), HasSubstr("duplicate"));

  auto negative = WriteSafetensors(path, {{"t", DType::kF32, {-1}, {}}});
  EXPECT_EQ(negative.code(), absl::StatusCode::kInvalidArgument);

  struct stat info;
  EXPECT_NE(stat(path.c_str(), &info), 0);
}

TEST_F(SafetensorsTest, WriteToMissingDirectoryFails) {
  auto status =
      WriteSafetensors(Path("no/such/dir.safetensors"), {{"t", DType::kF32, {1}, F32Bytes({1.0f})}});
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(Message(status), HasSubstr("no/such/dir.safetensors"));
}

}  // namespace
}  // namespace matformer
