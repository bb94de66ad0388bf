// Certificates for TLS tests, made at test time with the openssl command: a
// CA and a certificate it signs for localhost / 127.0.0.1 (server and client
// use), with EC P-256 keys.
#pragma once

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace sy::testing {

struct TestPki {
  std::string ca_file;    // the CA's certificate
  std::string cert_file;  // a certificate it signed
  std::string key_file;   // that certificate's key
};

// Makes `name`'s CA and certificate under `dir` (which must exist). The
// openssl output goes to dir/name-openssl.log.
inline absl::StatusOr<TestPki> MakeTestPki(const std::string& dir, const std::string& name) {
  const std::string p = absl::StrCat(dir, "/", name);
  {
    std::ofstream ext(p + "-ext.cnf");
    ext << "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        << "basicConstraints=CA:FALSE\n"
        << "keyUsage=digitalSignature,keyEncipherment\n"
        << "extendedKeyUsage=serverAuth,clientAuth\n";
  }
  const std::string log = " >>" + p + "-openssl.log 2>&1";
  const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  const std::string cmds[] = {
      "openssl req -x509" + ec + " -keyout " + p + "-ca.key -out " + p +
          "-ca.pem -days 2 -subj /CN=" + name + "-ca",
      "openssl req" + ec + " -keyout " + p + ".key -out " + p + ".csr -subj /CN=" + name,
      "openssl x509 -req -in " + p + ".csr -CA " + p + "-ca.pem -CAkey " + p +
          "-ca.key -CAcreateserial -out " + p + ".pem -days 2 -extfile " + p + "-ext.cnf",
  };
  for (const std::string& cmd : cmds) {
    if (std::system((cmd + log).c_str()) != 0) {
      return absl::InternalError(absl::StrCat("'", cmd, "' failed; see ", p, "-openssl.log"));
    }
  }
  return TestPki{p + "-ca.pem", p + ".pem", p + ".key"};
}

}  // namespace sy::testing
