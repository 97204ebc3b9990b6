#ifndef MATFORMER_CORE_MODEL_SAFETENSORS_H_
#define MATFORMER_CORE_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/model/config.h"

namespace matformer {

// A tensor inside a mapped file: no copy is made.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;

  int64_t num_elements() const;
  // Element (row, col) of a 2-D tensor, converted to f32.
  float At(int64_t row, int64_t col) const;
  // Copies row `row` of a 2-D tensor (or the whole 1-D tensor for row 0) into `out` as f32.
  void RowToF32(int64_t row, float* out) const;
};

// Page advice for a tensor of a mapped file (whole pages inside it only).
// ReleasePages: its pages leave this process's resident set (a tensor packed
// into memory is not read from the file again; if it is, pages refault).
// AdviseRandomRows: a table read a row at a time (embeddings, the PLE table):
// no read-ahead or fault-around, so a row brings in its own pages and not the
// megabytes around it (measured: 8 MB read-ahead took 41% of a 3.8 GB PLE
// table into the page cache for 2000 prompt tokens).
void ReleasePages(const TensorView& tensor);
void AdviseRandomRows(const TensorView& tensor);

// A read-only memory mapping of a whole file. Pages come in on demand, so a
// large table that is only partly read stays mostly out of resident memory.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const std::byte* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const std::byte* data_;
  size_t size_;
};

// A safetensors file (https://github.com/huggingface/safetensors format):
// 8-byte little-endian header length, a JSON header, then the data. Open()
// validates the header completely (dtypes F32/BF16 only, shapes, offsets inside
// the data, no overlaps, nbytes == product(shape) * dtype size) so that every
// later access is in bounds.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  // NotFound naming the tensor if absent.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;
  bool Contains(absl::string_view name) const { return tensors_.contains(name); }
  std::vector<std::string> Names() const;
  const MappedFile& file() const { return *file_; }

 private:
  std::unique_ptr<MappedFile> file_;
  absl::flat_hash_map<std::string, TensorView> tensors_;
};

// Writes tensors to a safetensors file (tools and tests).
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors);

}  // namespace matformer

#endif  // MATFORMER_CORE_MODEL_SAFETENSORS_H_
