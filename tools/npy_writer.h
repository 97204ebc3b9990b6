#ifndef MATFORMER_TOOLS_NPY_WRITER_H_
#define MATFORMER_TOOLS_NPY_WRITER_H_

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace matformer::tools {

// Writes values as a float32 NumPy .npy file of shape [rows, cols] (format 1.0).
inline absl::Status WriteNpy(const std::string& path, const std::vector<float>& values, int64_t rows, int64_t cols) {
  std::string header = absl::StrFormat("{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols);
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  const uint16_t header_size = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(reinterpret_cast<const char*>(&header_size), 2);
  out << header;
  out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(float)));
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace matformer::tools

#endif  // MATFORMER_TOOLS_NPY_WRITER_H_
