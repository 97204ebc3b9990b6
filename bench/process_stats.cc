#include "bench/process_stats.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace matformer::bench {

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

absl::StatusOr<std::vector<int>> ParseIntList(const char* flag, const std::string& list, int min) {
  std::vector<int> values;
  for (absl::string_view text : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int value = 0;
    if (!absl::SimpleAtoi(text, &value) || value < min) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", text, "' is not an integer >= ", min));
    }
    values.push_back(value);
  }
  if (values.empty() && min > 0) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return values;
}

size_t PeakRssBytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    size_t kib = 0;
    if (line.rfind("VmHWM:", 0) == 0 &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(absl::string_view(line).substr(6), "kB")),
                         &kib)) {
      return kib * 1024;
    }
  }
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<size_t>(usage.ru_maxrss) * 1024;
}

void ResetPeakRss() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  clear_refs << "5";
}

size_t CurrentRssBytes() {
  std::ifstream statm("/proc/self/statm");
  size_t size_pages = 0, resident_pages = 0;
  if (!(statm >> size_pages >> resident_pages)) return 0;
  return resident_pages * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

absl::Status DropFromPageCache(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  // A file written just now has dirty pages, which POSIX_FADV_DONTNEED keeps.
  const int error = fdatasync(fd) != 0 ? errno : posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  if (error != 0) return absl::InternalError(absl::StrCat("dropping ", path, " from the page cache: errno ", error));
  return absl::OkStatus();
}

absl::StatusOr<PageCount> PagesInPageCache(const void* data, size_t bytes) {
  // The range starts wherever the file's layout put it: widen to pages, which
  // stay inside the file's mapping.
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes + page - 1) / page * page;
  std::vector<unsigned char> in_core((end - begin) / page);
  if (mincore(reinterpret_cast<void*>(begin), end - begin, in_core.data()) != 0) {
    return absl::InternalError(absl::StrCat("mincore failed: errno ", errno));
  }
  PageCount count{.in_page_cache = 0, .total = static_cast<int64_t>(in_core.size())};
  for (unsigned char v : in_core) count.in_page_cache += v & 1;
  return count;
}

}  // namespace matformer::bench
