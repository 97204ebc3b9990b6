#ifndef MATFORMER_SERVER_TLS_H_
#define MATFORMER_SERVER_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"

namespace matformer::server {

// The TLS flags: --tls_cert and --tls_key (PEM) turn TLS on; --tls_client_ca
// (PEM, one or more CA certificates) also requires every client to present a
// certificate that chains to one of them (mutual TLS).
struct TlsFlags {
  std::string cert;
  std::string key;
  std::string client_ca;
  bool enabled() const { return !cert.empty() || !key.empty() || !client_ca.empty(); }
};

// Reads and checks the files of `flags` and builds the gRPC port's
// credentials: insecure when no TLS flag is set. Every file must be readable
// (at most 1 MiB), hold PEM that parses, the key must be an unencrypted
// private key matching the certificate, and the certificates must be valid
// now. Errors name the flag and the file ("--tls_key=/path: ...").
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFlags& flags);

}  // namespace matformer::server

#endif  // MATFORMER_SERVER_TLS_H_
