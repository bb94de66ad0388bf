// Who may call what: API keys for the public APIs and TLS credentials for
// gRPC servers and channels.
//
// API keys. A key file holds one key per line with its rights:
//     <key> <right>[,<right>...]      # rights: generate, admin
// Blank lines and text after '#' are ignored; a key is 16 to 512 printable
// characters without spaces. Only each key's SHA-256 is kept in memory.
// Callers send "authorization: Bearer <key>" metadata; Check() gives
// UNAUTHENTICATED for a missing, malformed or unknown key and
// PERMISSION_DENIED for a key without the right.
//
// TLS. TlsFiles names PEM files: a certificate and its key (what this side
// presents) and a CA (what it verifies the other side against). Internal
// services (coordinator, attention and expert workers, the router's and the
// tools' calls to them) use one process-wide setting, made once at start-up
// from the cluster YAML (SetInternalTls); without one they run in plaintext.
// With one, every internal server requires a client certificate signed by the
// cluster CA (mutual TLS) and every internal channel presents this process's
// certificate and verifies the server's.
#pragma once

#include <grpcpp/grpcpp.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/security/tls_files.h"

namespace sy::security {

enum class Right : uint8_t { kGenerate = 1, kAdmin = 2 };
const char* RightName(Right right);

class ApiKeys {
 public:
  // `source` names the text in errors (file:line).
  static absl::StatusOr<ApiKeys> Parse(absl::string_view text, const std::string& source);
  static absl::StatusOr<ApiKeys> Load(const std::string& path);

  // OK when `authorization` ("Bearer <key>") names a key with `right`.
  absl::Status CheckAuthorization(absl::string_view authorization, Right right) const;
  // The same for a call's "authorization" metadata (missing: UNAUTHENTICATED).
  absl::Status Check(const grpc::ServerContextBase& context, Right right) const;
  size_t size() const { return keys_.size(); }

 private:
  std::map<std::array<uint8_t, 32>, uint8_t> keys_;  // SHA-256 -> rights mask
};

// "Bearer <key>", for a client's "authorization" metadata.
std::string BearerValue(absl::string_view key);

// Reads a whole (PEM or key) file; NotFound naming `what` and the path when
// it cannot.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path, const std::string& what);

// Server credentials presenting files.cert_file/key_file; with
// `require_client_cert`, clients must present a certificate signed by
// files.ca_file. Errors name the file that could not be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> TlsServerCredentials(
    const TlsFiles& files, bool require_client_cert);
// Channel credentials verifying the server against files.ca_file (the
// system roots when empty) and presenting cert_file/key_file when given.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsChannelCredentials(
    const TlsFiles& files);

// The process-wide internal setting. Call once, before any server or channel
// is made (not thread-safe against the accessors below); empty files mean
// plaintext. Errors name the file that could not be read.
absl::Status SetInternalTls(const TlsFiles& files);
bool InternalTlsEnabled();
std::shared_ptr<grpc::ServerCredentials> InternalServerCredentials();
// A channel to an internal service at `address` with `args` (the server
// name override added when configured).
std::shared_ptr<grpc::Channel> InternalChannel(const std::string& address,
                                               grpc::ChannelArguments args = {});

}  // namespace sy::security
