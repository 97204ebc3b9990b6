#ifndef MATFORMER_SERVER_LOG_H_
#define MATFORMER_SERVER_LOG_H_

#include "absl/strings/string_view.h"

namespace matformer::server {

// Writes one line to stderr, prefixed with the UTC time. Lines from
// concurrent callers never interleave.
void Log(absl::string_view message);

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_LOG_H_
