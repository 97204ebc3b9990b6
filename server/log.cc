#include "server/log.h"

#include <cstdio>
#include <string>

#include "absl/base/attributes.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace matformer::server {
namespace {

ABSL_CONST_INIT absl::Mutex log_mutex(absl::kConstInit);

}  // namespace

void Log(absl::string_view message) {
  const std::string time = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  absl::MutexLock lock(&log_mutex);
  std::fprintf(stderr, "%s %.*s\n", time.c_str(), static_cast<int>(message.size()), message.data());
  std::fflush(stderr);
}

}  // namespace matformer::server
