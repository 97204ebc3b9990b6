#include "core/util/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace matformer {

absl::StatusOr<std::string> ReadBoundedFile(const std::string& path, size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    const std::string message = absl::StrCat("cannot open: ", std::strerror(error));
    return error == ENOENT ? absl::NotFoundError(message) : absl::InvalidArgumentError(message);
  }
  struct stat info;
  absl::Status status;
  std::string text;
  if (::fstat(fd, &info) != 0) {
    status = absl::InvalidArgumentError(absl::StrCat("cannot stat: ", std::strerror(errno)));
  } else if (!S_ISREG(info.st_mode)) {
    status = absl::InvalidArgumentError("not a regular file");
  } else if (static_cast<uint64_t>(info.st_size) > max_bytes) {
    status = absl::InvalidArgumentError(absl::StrCat(info.st_size, " bytes, more than the limit of ", max_bytes));
  } else {
    // The file may grow between fstat and read: never read past the bound.
    text.resize(max_bytes + 1);
    size_t total = 0;
    while (total < text.size()) {
      const ssize_t n = ::read(fd, text.data() + total, text.size() - total);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = absl::InvalidArgumentError(absl::StrCat("cannot read: ", std::strerror(errno)));
        break;
      }
      if (n == 0) break;
      total += static_cast<size_t>(n);
    }
    text.resize(total);
    if (status.ok() && total > max_bytes) {
      status = absl::InvalidArgumentError(absl::StrCat("more than the limit of ", max_bytes, " bytes"));
    }
  }
  ::close(fd);
  if (!status.ok()) return status;
  return text;
}

absl::StatusOr<std::string> ReadBoundedFile(const std::string& path, size_t max_bytes, absl::string_view prefix) {
  absl::StatusOr<std::string> text = ReadBoundedFile(path, max_bytes);
  if (!text.ok()) return absl::Status(text.status().code(), absl::StrCat(prefix, text.status().message()));
  return text;
}

}  // namespace matformer
