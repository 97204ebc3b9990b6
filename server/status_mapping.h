#ifndef MATFORMER_SERVER_STATUS_MAPPING_H_
#define MATFORMER_SERVER_STATUS_MAPPING_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace matformer::server {

// The one place where engine and server errors (absl::Status) become gRPC
// statuses: the codes are the same canonical codes, the message is kept.
grpc::Status ToGrpcStatus(const absl::Status& status);

// "OK", "INVALID_ARGUMENT", ...: for metric labels and logs.
std::string GrpcCodeName(grpc::StatusCode code);

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_STATUS_MAPPING_H_
