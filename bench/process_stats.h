#ifndef MATFORMER_BENCH_PROCESS_STATS_H_
#define MATFORMER_BENCH_PROCESS_STATS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

// What the benchmarks measure about themselves: time, memory, page cache;
// and the flag lists they share.
namespace matformer::bench {

double NowSeconds();  // steady clock
double Median(std::vector<double> values);

// A comma-separated list of integers >= `min`; empty only when `min` is 0.
// Errors name the flag ("--prompts: 'x' is not an integer >= 1").
absl::StatusOr<std::vector<int>> ParseIntList(const char* flag, const std::string& list, int min = 1);

// The kernel's high-water mark of this process's RSS (VmHWM), and its reset
// to the current RSS (/proc/self/clear_refs "5"): a benchmark resets it after
// the machine limits' 1 GiB buffer so that the buffer is not the peak.
// PeakRssBytes falls back to getrusage (which never resets) without /proc.
size_t PeakRssBytes();
void ResetPeakRss();
size_t CurrentRssBytes();

// Flushes `path` and evicts its pages from the page cache, so that a load
// that follows reads it from disk and the pages found in RAM later are the
// ones the run touched.
absl::Status DropFromPageCache(const std::string& path);

// Pages of the mapped range [data, data + bytes) that are in the page cache
// (mincore: read by anyone, read-ahead included), and how many pages it spans.
struct PageCount {
  int64_t in_page_cache = 0;
  int64_t total = 0;
};
absl::StatusOr<PageCount> PagesInPageCache(const void* data, size_t bytes);

}  // namespace matformer::bench

#endif  // MATFORMER_BENCH_PROCESS_STATS_H_
