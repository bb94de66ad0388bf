// The PEM files of one side of a TLS connection (no gRPC types: the cluster
// config holds these).
#pragma once

#include <string>

namespace sy::security {

struct TlsFiles {
  std::string ca_file;    // verifies the other side (required for internal TLS)
  std::string cert_file;  // this side's certificate chain
  std::string key_file;   // its private key
  // Internal channels check the server's certificate for this name instead of
  // the address's host (one certificate for every host of a cluster).
  std::string server_name;
  bool enabled() const { return !cert_file.empty() || !ca_file.empty(); }
};

}  // namespace sy::security
