// The safetensors loader on arbitrary files. The bytes go to a memfd and the
// loader opens it by path (/proc/self/fd/N), through the same open + fstat +
// mmap as a model file. Whatever Open accepts must be readable in bounds:
// every tensor's first and last row are converted (ASan checks the reads).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/model/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("safetensors_fuzz", MFD_CLOEXEC);
  FUZZ_CHECK(fd >= 0);
  size_t written = 0;
  while (written < size) {
    const ssize_t n = write(fd, data + written, size - written);
    FUZZ_CHECK(n > 0);
    written += static_cast<size_t>(n);
  }
  absl::StatusOr<std::unique_ptr<matformer::SafetensorsFile>> file =
      matformer::SafetensorsFile::Open(absl::StrCat("/proc/self/fd/", fd));
  if (file.ok()) {
    for (const std::string& name : (*file)->Names()) {
      absl::StatusOr<matformer::TensorView> view = (*file)->Get(name);
      FUZZ_CHECK(view.ok());
      const int64_t elements = view->num_elements();
      FUZZ_CHECK(static_cast<uint64_t>(elements) * matformer::DTypeSize(view->dtype) == view->nbytes);
      if (elements == 0) continue;
      const int64_t cols = view->shape.empty() ? 1 : view->shape.back();
      std::vector<float> row(static_cast<size_t>(cols));
      view->RowToF32(0, row.data());
      view->RowToF32(elements / cols - 1, row.data());
    }
  }
  close(fd);
  return 0;
}
