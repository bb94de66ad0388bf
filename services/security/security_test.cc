#include "services/security/security.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>

#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/test_pki.h"

namespace sy::security {
namespace {

using ::testing::HasSubstr;

constexpr char kKeys[] = R"(# operators
sk-generate-0123456789 generate
sk-admin-only-0123456789 admin   # the dashboard
sk-both-0123456789abcdef generate,admin
)";

TEST(ApiKeysTest, ChecksKeysAndRights) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(kKeys, "keys.txt");
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->size(), 3u);
  EXPECT_TRUE(keys->CheckAuthorization("Bearer sk-generate-0123456789", Right::kGenerate).ok());
  EXPECT_TRUE(keys->CheckAuthorization("Bearer sk-both-0123456789abcdef", Right::kAdmin).ok());
  EXPECT_TRUE(keys->CheckAuthorization("Bearer sk-both-0123456789abcdef", Right::kGenerate).ok());
  EXPECT_TRUE(keys->CheckAuthorization("bearer sk-admin-only-0123456789", Right::kAdmin).ok());
  const struct {
    const char* authorization;
    Right right;
    absl::StatusCode code;
    const char* message;
  } cases[] = {
      {"", Right::kGenerate, absl::StatusCode::kUnauthenticated, "an API key is required"},
      {"sk-generate-0123456789", Right::kGenerate, absl::StatusCode::kUnauthenticated,
       "must be 'Bearer <key>'"},
      {"Basic dXNlcjpwYXNz", Right::kGenerate, absl::StatusCode::kUnauthenticated,
       "must be 'Bearer <key>'"},
      {"Bearer sk-unknown-0123456789", Right::kGenerate, absl::StatusCode::kUnauthenticated,
       "unknown API key"},
      {"Bearer sk-generate-012345678", Right::kGenerate, absl::StatusCode::kUnauthenticated,
       "unknown API key"},
      {"Bearer sk-generate-0123456789", Right::kAdmin, absl::StatusCode::kPermissionDenied,
       "does not have the 'admin' right"},
      {"Bearer sk-admin-only-0123456789", Right::kGenerate, absl::StatusCode::kPermissionDenied,
       "does not have the 'generate' right"},
  };
  for (const auto& c : cases) {
    const absl::Status st = keys->CheckAuthorization(c.authorization, c.right);
    EXPECT_EQ(st.code(), c.code) << c.authorization << ": " << st;
    EXPECT_THAT(st.message(), HasSubstr(c.message)) << c.authorization;
  }
}

TEST(ApiKeysTest, FileErrorsNameTheLine) {
  const std::pair<const char*, const char*> cases[] = {
      {"sk-generate-0123456789\n", "keys.txt:1: expected '<key> <rights>'"},
      {"# c\nshort generate\n", "keys.txt:2: a key must be 16 to 512 printable characters"},
      {"sk-generate-0123456789 generate,root\n", "keys.txt:1: unknown right 'root'"},
      {"sk-generate-0123456789 generate\nsk-generate-0123456789 admin\n",
       "keys.txt:2: the key is listed twice"},
      {"sk-generate-0123456789 generate extra\n", "keys.txt:1: expected"},
      {"# nothing\n\n", "keys.txt: no API key in the file"},
  };
  for (const auto& [text, message] : cases) {
    absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(text, "keys.txt");
    ASSERT_FALSE(keys.ok()) << text;
    EXPECT_EQ(keys.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(keys.status().message(), HasSubstr(message)) << text;
  }
  absl::StatusOr<ApiKeys> missing = ApiKeys::Load("/nonexistent/keys.txt");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/keys.txt"));
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() / ("sy-tls-test-" + std::to_string(getpid())))
               .string();
    std::filesystem::create_directories(dir_);
    absl::StatusOr<testing::TestPki> cluster = testing::MakeTestPki(dir_, "cluster");
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    absl::StatusOr<testing::TestPki> other = testing::MakeTestPki(dir_, "other");
    ASSERT_TRUE(other.ok()) << other.status();
    cluster_ = {cluster->ca_file, cluster->cert_file, cluster->key_file, ""};
    other_ = {other->ca_file, other->cert_file, other->key_file, ""};
  }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(dir_);
    ASSERT_TRUE(SetInternalTls({}).ok());
  }

  // Answers every health check SERVING.
  class Healthy final : public grpc::health::v1::Health::CallbackService {
    grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                    const grpc::health::v1::HealthCheckRequest* /*request*/,
                                    grpc::health::v1::HealthCheckResponse* response) override {
      response->set_status(grpc::health::v1::HealthCheckResponse::SERVING);
      grpc::ServerUnaryReactor* r = context->DefaultReactor();
      r->Finish(grpc::Status::OK);
      return r;
    }
  };

  // A health server with `creds` on a free loopback port.
  std::unique_ptr<grpc::Server> Serve(std::shared_ptr<grpc::ServerCredentials> creds, int* port) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", std::move(creds), port);
    b.RegisterService(&health_);
    return b.BuildAndStart();
  }
  Healthy health_;

  // The health check's status code over `channel` (2 s deadline).
  static grpc::StatusCode Check(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::health::v1::HealthCheckResponse resp;
    return stub->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp).error_code();
  }

  std::string dir_;
  TlsFiles cluster_, other_;
};

// Mutual TLS on internal services: a client with the cluster's certificate
// gets through; plaintext, no client certificate and one from another CA
// are refused.
TEST_F(TlsTest, InternalServicesRequireTheClustersCertificate) {
  ASSERT_TRUE(SetInternalTls(cluster_).ok());
  EXPECT_TRUE(InternalTlsEnabled());
  int port = 0;
  auto server = Serve(InternalServerCredentials(), &port);
  ASSERT_NE(server, nullptr);
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  EXPECT_EQ(Check(InternalChannel(addr)), grpc::StatusCode::OK);
  EXPECT_EQ(Check(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials())),
            grpc::StatusCode::UNAVAILABLE);
  // Trusts the server, presents no certificate.
  auto no_cert = TlsChannelCredentials({cluster_.ca_file, "", "", ""});
  ASSERT_TRUE(no_cert.ok()) << no_cert.status();
  EXPECT_EQ(Check(grpc::CreateChannel(addr, *no_cert)), grpc::StatusCode::UNAVAILABLE);
  // Trusts the server, presents another CA's certificate.
  auto foreign = TlsChannelCredentials({cluster_.ca_file, other_.cert_file, other_.key_file, ""});
  ASSERT_TRUE(foreign.ok()) << foreign.status();
  EXPECT_EQ(Check(grpc::CreateChannel(addr, *foreign)), grpc::StatusCode::UNAVAILABLE);
  // Presents the cluster's certificate but does not trust the server.
  auto distrust =
      TlsChannelCredentials({other_.ca_file, cluster_.cert_file, cluster_.key_file, ""});
  ASSERT_TRUE(distrust.ok());
  EXPECT_EQ(Check(grpc::CreateChannel(addr, *distrust)), grpc::StatusCode::UNAVAILABLE);
  server->Shutdown();
}

// TLS on a public API: any client that trusts the server's CA gets through;
// plaintext to the TLS port fails.
TEST_F(TlsTest, PublicTlsNeedsNoClientCertificate) {
  auto creds = TlsServerCredentials({"", cluster_.cert_file, cluster_.key_file, ""}, false);
  ASSERT_TRUE(creds.ok()) << creds.status();
  int port = 0;
  auto server = Serve(*creds, &port);
  ASSERT_NE(server, nullptr);
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  auto client = TlsChannelCredentials({cluster_.ca_file, "", "", ""});
  ASSERT_TRUE(client.ok());
  EXPECT_EQ(Check(grpc::CreateChannel(addr, *client)), grpc::StatusCode::OK);
  EXPECT_EQ(Check(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials())),
            grpc::StatusCode::UNAVAILABLE);
  server->Shutdown();
}

TEST_F(TlsTest, MissingFilesAreNamed) {
  TlsFiles bad = cluster_;
  bad.key_file = dir_ + "/missing.key";
  const absl::Status st = SetInternalTls(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(st.message(), HasSubstr("missing.key"));
  EXPECT_FALSE(InternalTlsEnabled());
  EXPECT_THAT(SetInternalTls({"", cluster_.cert_file, cluster_.key_file, ""}).message(),
              HasSubstr("needs ca_file, cert_file and key_file"));
  EXPECT_EQ(TlsServerCredentials({"", "", cluster_.key_file, ""}, false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sy::security
