#include "services/security/security.h"

#include <openssl/evp.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sy::security {
namespace {

constexpr size_t kMinKeyLength = 16;
constexpr size_t kMaxKeyLength = 512;

std::array<uint8_t, 32> Sha256(absl::string_view text) {
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

bool ValidKey(absl::string_view key) {
  if (key.size() < kMinKeyLength || key.size() > kMaxKeyLength) return false;
  for (const char c : key) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

struct Internal {
  TlsFiles files;
  std::shared_ptr<grpc::ServerCredentials> server;
  std::shared_ptr<grpc::ChannelCredentials> channel;
};
Internal& InternalState() {
  static Internal* state = new Internal();  // never destroyed: used at exit
  return *state;
}

}  // namespace

const char* RightName(Right right) { return right == Right::kAdmin ? "admin" : "generate"; }

absl::StatusOr<ApiKeys> ApiKeys::Parse(absl::string_view text, const std::string& source) {
  ApiKeys keys;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    const size_t hash = line.find('#');
    if (hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    const std::string where = absl::StrCat(source, ":", line_no);
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": expected '<key> <rights>' (rights: generate, admin)"));
    }
    if (!ValidKey(fields[0])) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": a key must be ", kMinKeyLength,
                                                     " to ", kMaxKeyLength,
                                                     " printable characters without spaces"));
    }
    uint8_t rights = 0;
    for (absl::string_view r : absl::StrSplit(fields[1], ',')) {
      if (r == "generate") {
        rights |= static_cast<uint8_t>(Right::kGenerate);
      } else if (r == "admin") {
        rights |= static_cast<uint8_t>(Right::kAdmin);
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": unknown right '", r, "' (rights: generate, admin)"));
      }
    }
    if (!keys.keys_.emplace(Sha256(fields[0]), rights).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": the key is listed twice"));
    }
  }
  if (keys.keys_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": no API key in the file"));
  }
  return keys;
}

absl::StatusOr<ApiKeys> ApiKeys::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadSecretFile(path, "API key file");
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

absl::Status ApiKeys::CheckAuthorization(absl::string_view authorization, Right right) const {
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "an API key is required (metadata 'authorization: Bearer <key>')");
  }
  absl::string_view key = authorization;
  if (!absl::ConsumePrefix(&key, "Bearer ") && !absl::ConsumePrefix(&key, "bearer ")) {
    return absl::UnauthenticatedError("the authorization metadata must be 'Bearer <key>'");
  }
  key = absl::StripAsciiWhitespace(key);
  auto it = keys_.find(Sha256(key));
  if (it == keys_.end()) return absl::UnauthenticatedError("unknown API key");
  if ((it->second & static_cast<uint8_t>(right)) == 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("this API key does not have the '", RightName(right), "' right"));
  }
  return absl::OkStatus();
}

absl::Status ApiKeys::Check(const grpc::ServerContextBase& context, Right right) const {
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return CheckAuthorization("", right);
  return CheckAuthorization(absl::string_view(it->second.data(), it->second.size()), right);
}

std::string BearerValue(absl::string_view key) { return absl::StrCat("Bearer ", key); }

absl::StatusOr<std::string> ReadSecretFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the ", what, " '", path, "'"));
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

namespace {

// The texts of the PEM files `files` names (empty where it names none).
struct PemTexts {
  std::string ca, cert, key;
};
absl::StatusOr<PemTexts> ReadPems(const TlsFiles& files) {
  PemTexts p;
  const struct {
    const std::string& path;
    const char* what;
    std::string* out;
  } items[] = {{files.ca_file, "TLS CA (ca_file)", &p.ca},
               {files.cert_file, "TLS certificate (cert_file)", &p.cert},
               {files.key_file, "TLS key (key_file)", &p.key}};
  for (const auto& item : items) {
    if (item.path.empty()) continue;
    absl::StatusOr<std::string> text = ReadSecretFile(item.path, item.what);
    if (!text.ok()) return text.status();
    *item.out = *std::move(text);
  }
  return p;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> TlsServerCredentials(
    const TlsFiles& files, bool require_client_cert) {
  if (files.cert_file.empty() || files.key_file.empty()) {
    return absl::InvalidArgumentError("a TLS server needs cert_file and key_file");
  }
  if (require_client_cert && files.ca_file.empty()) {
    return absl::InvalidArgumentError("a TLS server that verifies clients needs ca_file");
  }
  absl::StatusOr<PemTexts> pem = ReadPems(files);
  if (!pem.ok()) return pem.status();
  grpc::SslServerCredentialsOptions opts(
      require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                          : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (require_client_cert) opts.pem_root_certs = std::move(pem->ca);
  opts.pem_key_cert_pairs.push_back({std::move(pem->key), std::move(pem->cert)});
  return grpc::SslServerCredentials(opts);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsChannelCredentials(
    const TlsFiles& files) {
  if (files.cert_file.empty() != files.key_file.empty()) {
    return absl::InvalidArgumentError("a TLS client certificate needs cert_file and key_file");
  }
  absl::StatusOr<PemTexts> pem = ReadPems(files);
  if (!pem.ok()) return pem.status();
  grpc::SslCredentialsOptions opts;
  opts.pem_root_certs = std::move(pem->ca);  // empty: the system roots
  opts.pem_cert_chain = std::move(pem->cert);
  opts.pem_private_key = std::move(pem->key);
  return grpc::SslCredentials(opts);
}

absl::Status SetInternalTls(const TlsFiles& files) {
  Internal& s = InternalState();
  if (!files.enabled()) {
    s = Internal();
    return absl::OkStatus();
  }
  if (files.ca_file.empty() || files.cert_file.empty() || files.key_file.empty()) {
    return absl::InvalidArgumentError("internal TLS needs ca_file, cert_file and key_file");
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> server =
      TlsServerCredentials(files, /*require_client_cert=*/true);
  if (!server.ok()) return server.status();
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel = TlsChannelCredentials(files);
  if (!channel.ok()) return channel.status();
  s.files = files;
  s.server = *std::move(server);
  s.channel = *std::move(channel);
  return absl::OkStatus();
}

bool InternalTlsEnabled() { return InternalState().server != nullptr; }

std::shared_ptr<grpc::ServerCredentials> InternalServerCredentials() {
  const Internal& s = InternalState();
  return s.server != nullptr ? s.server : grpc::InsecureServerCredentials();
}

std::shared_ptr<grpc::Channel> InternalChannel(const std::string& address,
                                               grpc::ChannelArguments args) {
  const Internal& s = InternalState();
  if (s.channel == nullptr) {
    return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  }
  if (!s.files.server_name.empty()) args.SetSslTargetNameOverride(s.files.server_name);
  return grpc::CreateCustomChannel(address, s.channel, args);
}

}  // namespace sy::security
