#ifndef MATFORMER_SERVER_FILES_H_
#define MATFORMER_SERVER_FILES_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace matformer::server {

// The contents of a small configuration file (tiers, tokens, certificates),
// read with a bound: the size is checked before reading and at most
// `max_bytes` + 1 bytes are ever read, so a huge file or a device such as
// /dev/zero fails with a message instead of filling memory. Errors say what
// went wrong with the file; callers prefix the flag.
absl::StatusOr<std::string> ReadBoundedFile(const std::string& path, size_t max_bytes);

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_FILES_H_
