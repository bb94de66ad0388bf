#include "tools/connect_flags.h"

#include <cstdlib>
#include <iostream>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "services/security/security.h"

ABSL_FLAG(std::string, tls_ca, "",
          "Connect over TLS, verifying the server's certificate with this CA file (PEM)");
ABSL_FLAG(std::string, tls_cert, "",
          "Client certificate (PEM) to present, for servers that require one (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "The client certificate's private key (PEM)");
ABSL_FLAG(std::string, tls_server_name, "",
          "Check the server's certificate for this name instead of the address's host");
ABSL_FLAG(std::string, api_key_file, "",
          "File holding the API key to send (authorization: Bearer); default: "
          "$SWITCHYARD_API_KEY when set");

namespace sy::tools {

void Connection::Authorize(grpc::ClientContext* context) const {
  if (!api_key.empty()) context->AddMetadata("authorization", security::BearerValue(api_key));
}

absl::StatusOr<Connection> ConnectFromFlags(const std::string& address,
                                            grpc::ChannelArguments args) {
  Connection c;
  const std::string key_file = absl::GetFlag(FLAGS_api_key_file);
  if (!key_file.empty()) {
    absl::StatusOr<std::string> key = security::ReadSecretFile(key_file, "--api-key-file");
    if (!key.ok()) return key.status();
    c.api_key = std::string(absl::StripAsciiWhitespace(*key));
    if (c.api_key.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--api-key-file ", key_file, " is empty"));
    }
  } else if (const char* env = std::getenv("SWITCHYARD_API_KEY"); env != nullptr) {
    c.api_key = std::string(absl::StripAsciiWhitespace(env));
  }
  const security::TlsFiles tls{absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_tls_cert),
                               absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_tls_server_name)};
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (tls.ca_file.empty() && (!tls.cert_file.empty() || !tls.server_name.empty())) {
    return absl::InvalidArgumentError("--tls-cert, --tls-key and --tls-server-name need --tls-ca");
  }
  if (tls.ca_file.empty()) {
    c.channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    return c;
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      security::TlsChannelCredentials(tls);
  if (!creds.ok()) return creds.status();
  if (!tls.server_name.empty()) args.SetSslTargetNameOverride(tls.server_name);
  c.channel = grpc::CreateCustomChannel(address, *creds, args);
  return c;
}

bool ConnectFromFlagsOrSay(const char* program, const std::string& address, Connection* out,
                           grpc::ChannelArguments args) {
  absl::StatusOr<Connection> c = ConnectFromFlags(address, std::move(args));
  if (!c.ok()) {
    std::cerr << program << ": " << c.status().message() << "\n";
    return false;
  }
  *out = *std::move(c);
  return true;
}

}  // namespace sy::tools
