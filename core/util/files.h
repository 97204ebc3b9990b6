#ifndef MATFORMER_CORE_UTIL_FILES_H_
#define MATFORMER_CORE_UTIL_FILES_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace matformer {

// The contents of a small text file (a config.json, the server's tiers,
// tokens and certificates), read with a bound: the size is checked before
// reading and at most `max_bytes` + 1 bytes are ever read, so a huge file or
// a device such as /dev/zero fails with a message instead of filling memory.
// Errors say what went wrong with the file (NotFound when it does not exist,
// InvalidArgument otherwise); callers prefix the path or the flag.
absl::StatusOr<std::string> ReadBoundedFile(const std::string& path, size_t max_bytes);

// ReadBoundedFile with `prefix` before any error message ("config.json: '<path>': ").
absl::StatusOr<std::string> ReadBoundedFile(const std::string& path, size_t max_bytes, absl::string_view prefix);

}  // namespace matformer

#endif  // MATFORMER_CORE_UTIL_FILES_H_
