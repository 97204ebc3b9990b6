#include "server/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/server_credentials.h"
#include "core/util/files.h"

namespace matformer::server {
namespace {

constexpr size_t kMaxPemBytes = 1 << 20;

struct BioDeleter {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Deleter {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using UniqueBio = std::unique_ptr<BIO, BioDeleter>;
using UniqueX509 = std::unique_ptr<X509, X509Deleter>;
using UniqueKey = std::unique_ptr<EVP_PKEY, KeyDeleter>;

// OpenSSL's default passphrase callback reads the terminal: an encrypted key
// must fail instead (gRPC cannot use one either).
int NoPassphrase(char*, int, int, void*) { return -1; }

absl::Status FlagError(absl::string_view flag, const std::string& path, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", path, ": ", message));
}

absl::StatusOr<std::string> ReadPem(absl::string_view flag, const std::string& path) {
  absl::StatusOr<std::string> text = ReadBoundedFile(path, kMaxPemBytes);
  if (!text.ok()) return FlagError(flag, path, text.status().message());
  return text;
}

UniqueBio MemoryBio(const std::string& text) {
  return UniqueBio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// Every certificate in `pem`, in order; an error unless there is at least one
// and all are currently valid.
absl::StatusOr<std::vector<UniqueX509>> ParseCertificates(absl::string_view flag, const std::string& path,
                                                          const std::string& pem) {
  std::vector<UniqueX509> certs;
  UniqueBio bio = MemoryBio(pem);
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) certs.emplace_back(cert);
  ERR_clear_error();  // the read that ended the loop leaves "no start line" queued
  if (certs.empty()) return FlagError(flag, path, "no PEM certificate (-----BEGIN CERTIFICATE-----) in it");
  for (size_t i = 0; i < certs.size(); ++i) {
    const std::string which = certs.size() == 1 ? "the certificate" : absl::StrCat("certificate ", i + 1);
    if (X509_cmp_current_time(X509_get0_notAfter(certs[i].get())) <= 0) {
      return FlagError(flag, path, absl::StrCat(which, " has expired"));
    }
    if (X509_cmp_current_time(X509_get0_notBefore(certs[i].get())) >= 0) {
      return FlagError(flag, path, absl::StrCat(which, " is not valid yet"));
    }
  }
  return certs;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFlags& flags) {
  if (!flags.enabled()) return grpc::InsecureServerCredentials();
  // TLS needs the server's certificate and its private key; mutual TLS needs both too.
  if (flags.cert.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_cert: required with ", flags.key.empty() ? "--tls_client_ca" : "--tls_key"));
  }
  if (flags.key.empty()) return absl::InvalidArgumentError("--tls_key: required with --tls_cert");
  absl::StatusOr<std::string> cert_pem = ReadPem("tls_cert", flags.cert);
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::vector<UniqueX509>> chain = ParseCertificates("tls_cert", flags.cert, *cert_pem);
  if (!chain.ok()) return chain.status();

  absl::StatusOr<std::string> key_pem = ReadPem("tls_key", flags.key);
  if (!key_pem.ok()) return key_pem.status();
  UniqueBio key_bio = MemoryBio(*key_pem);
  UniqueKey key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return FlagError("tls_key", flags.key, "not an unencrypted PEM private key (-----BEGIN PRIVATE KEY-----)");
  }
  // The first certificate of the chain is the server's own.
  if (X509_check_private_key(chain->front().get(), key.get()) != 1) {
    ERR_clear_error();
    return FlagError("tls_key", flags.key, absl::StrCat("does not match the certificate in --tls_cert=", flags.cert));
  }

  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_key_cert_pairs.push_back({*std::move(key_pem), *std::move(cert_pem)});
  if (!flags.client_ca.empty()) {
    absl::StatusOr<std::string> ca_pem = ReadPem("tls_client_ca", flags.client_ca);
    if (!ca_pem.ok()) return ca_pem.status();
    absl::StatusOr<std::vector<UniqueX509>> cas = ParseCertificates("tls_client_ca", flags.client_ca, *ca_pem);
    if (!cas.ok()) return cas.status();
    options.pem_root_certs = *std::move(ca_pem);
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

}  // namespace matformer::server
