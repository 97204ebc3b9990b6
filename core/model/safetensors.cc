#include "core/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace matformer {
namespace {

using Json = nlohmann::json;

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian data and tensors are read in place");

// The reference implementation's limit; a larger header is a corrupt length.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr absl::string_view kMetadataKey = "__metadata__";

absl::Status ErrnoError(int error, absl::string_view what, const std::string& path) {
  const std::string message = absl::StrCat(what, " '", path, "': ", std::strerror(error));
  switch (error) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::InternalError(message);
  }
}

// Closes the descriptor on every return path of MappedFile::Open.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() { ::close(fd_); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

std::string Shown(const Json& json) {
  constexpr size_t kMaxShown = 80;
  std::string text = json.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > kMaxShown) text = absl::StrCat(text.substr(0, kMaxShown), "...");
  return text;
}

absl::StatusOr<DType> ParseDType(const std::string& name) {
  if (name == "F32") return DType::kF32;
  if (name == "BF16") return DType::kBF16;
  constexpr size_t kMaxShown = 16;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype ", name.size() > kMaxShown ? name.substr(0, kMaxShown) + "..." : name,
                   " not supported (F32, BF16)"));
}

// Reads a non-negative JSON integer that fits in int64. The parser stores every
// non-negative integer as unsigned, so a signed value here is negative.
bool NonNegativeInt(const Json& json, int64_t& out) {
  if (!json.is_number_unsigned()) return false;
  const uint64_t value = json.get<uint64_t>();
  if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  out = static_cast<int64_t>(value);
  return true;
}

struct Extent {
  uint64_t begin;
  uint64_t end;
  const std::string* name;
};

// Validates one tensor entry of the header against a data section of
// `data_size` bytes. Errors are relative to the tensor; the caller adds the path.
absl::StatusOr<TensorView> ParseTensor(const std::string& name, const Json& entry, const std::byte* data,
                                       uint64_t data_size) {
  if (!entry.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("must be an object, got ", entry.type_name()));
  }
  for (const auto& [key, unused] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return absl::InvalidArgumentError(absl::StrCat("unknown key '", key, "'"));
    }
  }
  TensorView view;
  view.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return absl::InvalidArgumentError("dtype missing or not a string");
  }
  MF_ASSIGN_OR_RETURN(view.dtype, ParseDType(dtype_it->get<std::string>()));

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return absl::InvalidArgumentError("shape missing or not an array");
  }
  uint64_t num_elements = 1;
  for (const Json& dim_json : *shape_it) {
    int64_t dim = 0;
    if (!NonNegativeInt(dim_json, dim)) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", Shown(*shape_it), " must hold non-negative 64-bit integers"));
    }
    if (__builtin_mul_overflow(num_elements, static_cast<uint64_t>(dim), &num_elements) ||
        num_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat("shape ", Shown(*shape_it), " overflows"));
    }
    view.shape.push_back(dim);
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(num_elements, static_cast<uint64_t>(DTypeSize(view.dtype)), &nbytes)) {
    return absl::InvalidArgumentError(absl::StrCat("shape ", Shown(*shape_it), " overflows"));
  }

  auto offsets_it = entry.find("data_offsets");
  int64_t begin = 0;
  int64_t end = 0;
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !NonNegativeInt((*offsets_it)[0], begin) || !NonNegativeInt((*offsets_it)[1], end)) {
    return absl::InvalidArgumentError("data_offsets must be [begin, end] with non-negative integers");
  }
  if (begin > end || static_cast<uint64_t>(end) > data_size) {
    return absl::InvalidArgumentError(absl::StrCat("data_offsets [", begin, ", ", end,
                                                   "] not within the data section of ", data_size, " bytes"));
  }
  if (static_cast<uint64_t>(end - begin) != nbytes) {
    return absl::InvalidArgumentError(absl::StrCat("data_offsets [", begin, ", ", end, "] hold ", end - begin,
                                                   " bytes, shape ", Shown(*shape_it), " of ",
                                                   DTypeName(view.dtype), " needs ", nbytes));
  }
  view.data = data + begin;
  view.nbytes = static_cast<size_t>(nbytes);
  return view;
}

absl::Status ValidateMetadata(const Json& metadata) {
  if (!metadata.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(kMetadataKey, " must be an object"));
  }
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(kMetadataKey, " '", key, "' must be a string"));
    }
  }
  return absl::OkStatus();
}

float Bf16ToF32(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

float LoadF32(const TensorView& view, int64_t index) {
  // The data section need not be aligned for the element type, so load bytewise.
  if (view.dtype == DType::kBF16) {
    uint16_t bits;
    std::memcpy(&bits, view.data + index * 2, sizeof(bits));
    return Bf16ToF32(bits);
  }
  float value;
  std::memcpy(&value, view.data + index * 4, sizeof(value));
  return value;
}

int64_t RowLength(const TensorView& view) { return view.shape.empty() ? 1 : view.shape.back(); }

}  // namespace

int64_t TensorView::num_elements() const {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;
  return count;
}

float TensorView::At(int64_t row, int64_t col) const {
  const int64_t cols = RowLength(*this);
  assert(col >= 0 && col < cols && row >= 0 && (row + 1) * cols <= num_elements());
  return LoadF32(*this, row * cols + col);
}

void TensorView::RowToF32(int64_t row, float* out) const {
  const int64_t cols = RowLength(*this);
  assert(row >= 0 && (row + 1) * cols <= num_elements());
  const std::byte* src = data + row * cols * static_cast<int64_t>(DTypeSize(dtype));
  if (dtype == DType::kF32) {
    std::memcpy(out, src, cols * sizeof(float));
    return;
  }
  for (int64_t i = 0; i < cols; ++i) {
    uint16_t bits;
    std::memcpy(&bits, src + 2 * i, sizeof(bits));
    out[i] = Bf16ToF32(bits);
  }
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open", path);
  FdCloser closer(fd);
  struct stat info;
  if (::fstat(fd, &info) != 0) return ErrnoError(errno, "cannot stat", path);
  if (!S_ISREG(info.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a regular file"));
  }
  if (info.st_size == 0) {
    // mmap cannot map zero bytes, and no valid model file is empty.
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is empty"));
  }
  const size_t size = static_cast<size_t>(info.st_size);
  void* data = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (data == MAP_FAILED) return ErrnoError(errno, "cannot mmap", path);
  return std::unique_ptr<MappedFile>(new MappedFile(path, static_cast<const std::byte*>(data), size));
}

MappedFile::~MappedFile() { ::munmap(const_cast<std::byte*>(data_), size_); }

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  MF_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapped, MappedFile::Open(path));
  const std::string where = absl::StrCat("safetensors '", path, "': ");
  const MappedFile& file = *mapped;
  if (file.size() < 8) {
    return absl::DataLossError(
        absl::StrCat(where, "file is ", file.size(), " bytes, too short for the 8-byte header length"));
  }
  uint64_t header_size = 0;
  std::memcpy(&header_size, file.data(), sizeof(header_size));
  if (header_size < 2 || header_size > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "header length ", header_size, " outside [2, ", kMaxHeaderBytes, "]"));
  }
  if (header_size > file.size() - 8) {
    return absl::DataLossError(absl::StrCat(where, "header length ", header_size, " exceeds the ",
                                            file.size() - 8, " bytes after the length (truncated file?)"));
  }
  const char* header_begin = reinterpret_cast<const char*>(file.data() + 8);
  Json header;
  // The parser's exception is the only place its message (with the byte
  // position) is available; it is caught here so no exception leaves.
  try {
    header = Json::parse(header_begin, header_begin + header_size);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, "header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "header must be a JSON object, got ", header.type_name()));
  }

  const std::byte* data = file.data() + 8 + header_size;
  const uint64_t data_size = file.size() - 8 - header_size;
  auto result = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      if (auto status = ValidateMetadata(entry); !status.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(where, status.message()));
      }
      continue;
    }
    auto view = ParseTensor(name, entry, data, data_size);
    if (!view.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "tensor '", name, "': ", view.status().message()));
    }
    result->tensors_.emplace(name, *std::move(view));
  }

  // Built after the map is complete: its keys move while it grows. Empty
  // tensors occupy no bytes and so cannot overlap anything.
  std::vector<Extent> extents;
  for (const auto& [name, view] : result->tensors_) {
    if (view.nbytes == 0) continue;
    const uint64_t begin = static_cast<uint64_t>(view.data - data);
    extents.push_back({begin, begin + view.nbytes, &name});
  }
  std::sort(extents.begin(), extents.end(),
            [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < extents.size(); ++i) {
    if (extents[i].begin < extents[i - 1].end) {
      return absl::InvalidArgumentError(absl::StrCat(where, "tensor '", *extents[i].name, "' bytes [",
                                                     extents[i].begin, ", ", extents[i].end,
                                                     ") overlap tensor '", *extents[i - 1].name, "' bytes [",
                                                     extents[i - 1].begin, ", ", extents[i - 1].end, ")"));
    }
  }
  result->file_ = std::move(mapped);
  return result;
}

absl::StatusOr<TensorView> SafetensorsFile::Get(absl::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("safetensors '", file_->path(), "': no tensor '", name, "'"));
  }
  return it->second;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, unused] : tensors_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors) {
  std::vector<const TensorToWrite*> sorted;
  sorted.reserve(tensors.size());
  for (const TensorToWrite& tensor : tensors) sorted.push_back(&tensor);
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorToWrite* a, const TensorToWrite* b) { return a->name < b->name; });

  // nlohmann::json keeps object keys sorted, matching the data order below.
  Json header = Json::object();
  uint64_t offset = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const TensorToWrite& tensor = *sorted[i];
    if (tensor.name.empty() || tensor.name == kMetadataKey) {
      return absl::InvalidArgumentError(
          absl::StrCat("WriteSafetensors: invalid tensor name '", tensor.name, "'"));
    }
    if (i > 0 && tensor.name == sorted[i - 1]->name) {
      return absl::InvalidArgumentError(
          absl::StrCat("WriteSafetensors: duplicate tensor '", tensor.name, "'"));
    }
    uint64_t num_elements = 1;
    for (int64_t dim : tensor.shape) {
      if (dim < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("WriteSafetensors: tensor '", tensor.name, "' has a negative dimension"));
      }
      if (__builtin_mul_overflow(num_elements, static_cast<uint64_t>(dim), &num_elements)) {
        return absl::InvalidArgumentError(
            absl::StrCat("WriteSafetensors: tensor '", tensor.name, "' shape overflows"));
      }
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(num_elements, static_cast<uint64_t>(DTypeSize(tensor.dtype)), &nbytes) ||
        nbytes != tensor.bytes.size()) {
      return absl::InvalidArgumentError(absl::StrCat("WriteSafetensors: tensor '", tensor.name, "' has ",
                                                     tensor.bytes.size(), " bytes, its shape needs ",
                                                     num_elements, " elements of ", DTypeName(tensor.dtype)));
    }
    header[tensor.name] = {{"dtype", std::string(DTypeName(tensor.dtype))},
                           {"shape", tensor.shape},
                           {"data_offsets", {offset, offset + tensor.bytes.size()}}};
    offset += tensor.bytes.size();
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const Json::exception& e) {
    // dump() rejects names that are not valid UTF-8.
    return absl::InvalidArgumentError(absl::StrCat("WriteSafetensors: ", e.what()));
  }
  // Padding to 8 bytes keeps the data section, and so every F32 tensor, aligned.
  header_text.resize((header_text.size() + 7) / 8 * 8, ' ');
  const uint64_t header_size = header_text.size();

  // Written under a temporary name and renamed so that a failed or interrupted
  // write never leaves a half-written file at `path`.
  const std::string temp_path = absl::StrCat(path, ".tmp");
  std::FILE* out = std::fopen(temp_path.c_str(), "wb");
  if (out == nullptr) return ErrnoError(errno, "cannot create", temp_path);
  bool ok = std::fwrite(&header_size, sizeof(header_size), 1, out) == 1 &&
            std::fwrite(header_text.data(), 1, header_text.size(), out) == header_text.size();
  for (const TensorToWrite* tensor : sorted) {
    // fwrite's buffer must not be null, which an empty vector's data() may be.
    if (!ok || tensor->bytes.empty()) continue;
    ok = std::fwrite(tensor->bytes.data(), 1, tensor->bytes.size(), out) == tensor->bytes.size();
  }
  int error = ok ? 0 : errno;
  if (std::fclose(out) != 0 && ok) {
    ok = false;
    error = errno;
  }
  if (!ok) {
    std::remove(temp_path.c_str());
    return ErrnoError(error, "cannot write", temp_path);
  }
  if (std::rename(temp_path.c_str(), path.c_str()) != 0) {
    const int rename_errno = errno;
    std::remove(temp_path.c_str());
    return ErrnoError(rename_errno, "cannot rename to", path);
  }
  return absl::OkStatus();
}

namespace {

// The whole pages inside a tensor's bytes, and madvise over them.
void AdviseWholePages(const TensorView& tensor, int advice) {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(tensor.data);
  const uintptr_t begin = (start + page - 1) / page * page;
  const uintptr_t end = (start + tensor.nbytes) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, advice);
}

}  // namespace

void ReleasePages(const TensorView& tensor) { AdviseWholePages(tensor, MADV_DONTNEED); }
void AdviseRandomRows(const TensorView& tensor) { AdviseWholePages(tensor, MADV_RANDOM); }

}  // namespace matformer
