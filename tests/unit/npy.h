#ifndef MATFORMER_TESTS_UNIT_NPY_H_
#define MATFORMER_TESTS_UNIT_NPY_H_

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace matformer::testing {

// A float32 little-endian C-order array from a NumPy .npy file (format 1.x),
// the form tools/logits.cc writes and the golden files use.
struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

inline absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0 || bytes[6] != 1) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a version 1 .npy file"));
  }
  uint16_t header_size;
  std::memcpy(&header_size, bytes.data() + 8, 2);
  if (bytes.size() < 10u + header_size) return absl::InvalidArgumentError(absl::StrCat(path, ": truncated header"));
  const std::string header = bytes.substr(10, header_size);
  if (header.find("'descr': '<f4'") == std::string::npos ||
      header.find("'fortran_order': False") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not C-order float32: ", header));
  }
  const size_t open = header.find("'shape': (");
  const size_t close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no shape in ", header));
  }
  NpyArray array;
  int64_t count = 1;
  for (absl::string_view dim : absl::StrSplit(header.substr(open + 10, close - open - 10), ',', absl::SkipWhitespace())) {
    int64_t value;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(dim), &value)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": bad shape in ", header));
    }
    array.shape.push_back(value);
    count *= value;
  }
  if (bytes.size() != 10u + header_size + count * sizeof(float)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": data size does not match shape"));
  }
  array.data.resize(count);
  std::memcpy(array.data.data(), bytes.data() + 10 + header_size, count * sizeof(float));
  return array;
}

}  // namespace matformer::testing

#endif  // MATFORMER_TESTS_UNIT_NPY_H_
