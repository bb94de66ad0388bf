// Randomized robustness test of the public Generate API at the gRPC layer: a
// real RouterServer on loopback (its attention worker answers every valid
// request at once with the prompt's first token) gets
//   - GenerateRequests with random field values: ids of random bytes and
//     unicode, huge and negative numbers, long prompts, every sampling and
//     stopping field, over Generate and GenerateStream;
//   - raw random bytes (and mutated valid encodings) as the request of each
//     method, through a generic stub.
// Every call must end with OK or a clean status with a message
// (INVALID_ARGUMENT, RESOURCE_EXHAUSTED; gRPC's own UNIMPLEMENTED for bytes
// that do not parse as a request), and the server must still serve
// afterwards. Budget:
// common/fuzz.h.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "common/fuzz.h"
#include "common/log.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "services/router/router_server.h"
#include "switchyard/v1/generate.grpc.pb.h"

namespace sy::router {
namespace {

namespace v1 = ::switchyard::v1;

// Finishes every request at once: one token (the prompt's first), then
// kLength.
class InstantCall : public BackendCall {
 public:
  void Cancel() override {}
};
class InstantBackend : public AttentionBackend {
 public:
  explicit InstantBackend(std::string address) : address_(std::move(address)) {}
  const std::string& address() const override { return address_; }
  std::shared_ptr<BackendCall> Start(const engine::GenerationRequest& request, Deadline,
                                     BackendCallbacks callbacks) override {
    engine::RequestUpdate u;
    u.id = request.id;
    u.new_tokens = {request.prompt.empty() ? 0 : request.prompt[0]};
    u.finish = engine::FinishReason::kLength;
    callbacks.on_update(u);
    callbacks.on_done(absl::OkStatus());
    return std::make_shared<InstantCall>();
  }

 private:
  std::string address_;
};

// Up to `max_len` random code points (any plane, no surrogates) as UTF-8:
// what a proto string field may hold.
std::string RandomUtf8(std::mt19937_64& rng, size_t max_len) {
  std::string s;
  for (size_t n = fuzz::Pick(rng, max_len + 1); n > 0; --n) {
    uint32_t c =
        static_cast<uint32_t>((rng() & 1) ? fuzz::Pick(rng, 0x80) : fuzz::Pick(rng, 0x110000));
    if (c >= 0xD800 && c <= 0xDFFF) c = 0xFFFD;
    if (c < 0x80) {
      s += static_cast<char>(c);
    } else if (c < 0x800) {
      s += static_cast<char>(0xC0 | (c >> 6));
      s += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      s += static_cast<char>(0xE0 | (c >> 12));
      s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (c & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (c >> 18));
      s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return s;
}

std::string RandomBytes(std::mt19937_64& rng, size_t max_len) {
  std::string s(fuzz::Pick(rng, max_len + 1), '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// A random value from a spread that hits the limits and just past them.
int64_t Edgy(std::mt19937_64& rng) {
  static const int64_t kValues[] = {0,    1,    -1,    2,         7,         255,       256,
                                    4096, 4097, 65536, INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN};
  return (rng() & 3) ? kValues[fuzz::Pick(rng, std::size(kValues))]
                     : static_cast<int64_t>(rng() % 1000) - 100;
}
float EdgyFloat(std::mt19937_64& rng) {
  static const float kValues[] = {0.0f,
                                  1.0f,
                                  -1.0f,
                                  0.5f,
                                  2.0f,
                                  1e30f,
                                  -1e30f,
                                  std::numeric_limits<float>::infinity(),
                                  std::numeric_limits<float>::quiet_NaN(),
                                  1e-30f};
  return kValues[fuzz::Pick(rng, std::size(kValues))];
}

v1::GenerateRequest RandomRequest(std::mt19937_64& rng) {
  v1::GenerateRequest r;
  static const char* const kIds[] = {
      "", "a", "é🙂 x", "id with spaces", "x\ny", "../../etc/passwd", "\t"};
  if (rng() & 1) {
    r.set_request_id(kIds[fuzz::Pick(rng, std::size(kIds))]);
  } else {
    r.set_request_id(RandomUtf8(rng, (rng() & 7) ? 40 : 2000));
  }
  const size_t prompt = (rng() % 8 == 0) ? fuzz::Pick(rng, 5000) : fuzz::Pick(rng, 12);
  for (size_t i = 0; i < prompt; ++i) {
    r.add_input_ids(static_cast<int32_t>((rng() & 7) ? fuzz::Pick(rng, 200) : Edgy(rng)));
  }
  if (rng() & 1) r.mutable_stopping()->set_max_new_tokens(static_cast<int32_t>(Edgy(rng)));
  if (rng() & 1) r.mutable_stopping()->set_ignore_eos(rng() & 1);
  if (rng() & 3) {
    for (size_t i = fuzz::Pick(rng, 4); i > 0; --i) {
      r.mutable_stopping()->add_stop_token_ids(static_cast<int32_t>(Edgy(rng)));
    }
  }
  if (rng() & 1) {
    auto* s = r.mutable_sampling();
    if (rng() & 1) s->set_temperature(EdgyFloat(rng));
    if (rng() & 1) s->set_top_p(EdgyFloat(rng));
    if (rng() & 1) s->set_top_k(static_cast<int32_t>(Edgy(rng)));
    if (rng() & 1) s->set_seed(static_cast<uint64_t>(Edgy(rng)));
    if (rng() & 1) s->set_min_p(EdgyFloat(rng));
    if (rng() & 1) s->set_repetition_penalty(EdgyFloat(rng));
    if (rng() & 1) s->set_presence_penalty(EdgyFloat(rng));
    if (rng() & 1) s->set_frequency_penalty(EdgyFloat(rng));
  }
  if (rng() & 1) r.set_logprobs(static_cast<int32_t>(Edgy(rng)));
  return r;
}

class RouterFuzzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetMinLogLevel(LogLevel::kError);  // every refused call logs a warning
    RouterOptions o;
    o.listen_address = "127.0.0.1:0";
    o.model_dir = std::string(SY_SOURCE_DIR) + "/tests/data/goldens/qwen3_moe";
    o.max_queue = 64;
    o.max_new_tokens_limit = 256;
    o.attention_workers = {"instant:1"};
    auto server = RouterServer::Create(
        o, [](const std::string& a) { return std::make_shared<InstantBackend>(a); });
    ASSERT_TRUE(server.ok()) << server.status();
    router_ = *std::move(server);
    channel_ = grpc::CreateChannel(router_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::Generate::NewStub(channel_);
  }

  // Still serving: health SERVING and a valid request answered.
  void ExpectServing() {
    auto health = grpc::health::v1::Health::NewStub(channel_);
    grpc::ClientContext hc;
    grpc::health::v1::HealthCheckResponse hr;
    ASSERT_TRUE(health->Check(&hc, grpc::health::v1::HealthCheckRequest(), &hr).ok());
    EXPECT_EQ(hr.status(), grpc::health::v1::HealthCheckResponse::SERVING);
    v1::GenerateRequest r;
    r.add_input_ids(5);
    r.mutable_stopping()->set_max_new_tokens(1);
    grpc::ClientContext ctx;
    v1::GenerateResponse resp;
    const grpc::Status st = stub_->Generate(&ctx, r, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.output_ids_size(), 1);
  }

  // OK or a refusal of the request with a message. `undecodable`: the bytes
  // need not be a request, and gRPC itself answers those it cannot parse
  // (UNIMPLEMENTED, without a message, from the callback API of Debian's
  // gRPC 1.51) before any Switchyard code runs.
  static void ExpectClean(const grpc::Status& st, const std::string& what,
                          bool undecodable = false) {
    if (undecodable && st.error_code() == grpc::StatusCode::UNIMPLEMENTED) return;
    static const std::set<grpc::StatusCode> kAllowed = {grpc::StatusCode::OK,
                                                        grpc::StatusCode::INVALID_ARGUMENT,
                                                        grpc::StatusCode::RESOURCE_EXHAUSTED};
    EXPECT_TRUE(kAllowed.count(st.error_code()))
        << what << ": code " << st.error_code() << " " << st.error_message();
    if (!st.ok()) {
      EXPECT_FALSE(st.error_message().empty()) << what;
    }
  }

  std::unique_ptr<RouterServer> router_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generate::Stub> stub_;
};

TEST_F(RouterFuzzTest, RandomRequestsGetOkOrACleanStatus) {
  const fuzz::Config& config = fuzz::GetConfig(0x6e7e3a7eull);
  std::mt19937_64 rng(config.seed);
  fuzz::Tally tally;
  fuzz::RunBounded(
      config, "Generate requests with random fields", 0.5,
      [&](uint64_t i) {
        const v1::GenerateRequest r = RandomRequest(rng);
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
        grpc::Status st;
        if (i % 2 == 0) {
          v1::GenerateResponse resp;
          st = stub_->Generate(&ctx, r, &resp);
        } else {
          auto reader = stub_->GenerateStream(&ctx, r);
          v1::GenerateStreamResponse m;
          while (reader->Read(&m)) {
          }
          st = reader->Finish();
        }
        ExpectClean(st, r.ShortDebugString().substr(0, 300));
        tally.Count(st.ok());
      },
      [] { return ::testing::Test::HasFailure(); });
  tally.Print("Generate fields");
  EXPECT_GT(tally.accepted, 0u);
  EXPECT_GT(tally.refused, 0u);
  ExpectServing();
}

TEST_F(RouterFuzzTest, RandomBytesAsRequestsGetACleanStatus) {
  const fuzz::Config& config = fuzz::GetConfig(0x6e7e3a7eull);
  std::mt19937_64 rng(config.seed + 1);
  grpc::GenericStub generic(channel_);
  static const char* const kMethods[] = {"/switchyard.v1.Generate/Generate",
                                         "/switchyard.v1.Generate/GenerateStream",
                                         "/switchyard.v1.Generate/ModelInfo"};
  const fuzz::Dictionary dict{std::string("\x08\x10\x12\x1a\x22\x2a\x00\xff\x80\x7f", 10),
                              {std::string("\xff\xff\xff\xff\x0f", 5), std::string(10, '\xff')},
                              {}};
  fuzz::Tally tally;
  fuzz::RunBounded(
      config, "raw bytes as Generate/GenerateStream/ModelInfo requests", 0.5,
      [&](uint64_t) {
        std::string bytes;
        if (rng() & 1) {
          bytes = RandomBytes(rng, 200);
        } else {
          RandomRequest(rng).SerializeToString(&bytes);
          fuzz::Mutate(bytes, rng, dict, 1 << 14);
        }
        const char* method = kMethods[fuzz::Pick(rng, std::size(kMethods))];
        grpc::Slice slice(bytes);
        grpc::ByteBuffer request(&slice, 1), response;
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
        std::mutex mu;
        std::condition_variable cv;
        bool done = false;
        grpc::Status st;
        grpc::StubOptions options;
        generic.UnaryCall(&ctx, method, options, &request, &response, [&](grpc::Status s) {
          std::lock_guard<std::mutex> lock(mu);
          st = std::move(s);
          done = true;
          cv.notify_one();
        });
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return done; });
        ExpectClean(st, method, /*undecodable=*/true);
        tally.Count(st.ok());
      },
      [] { return ::testing::Test::HasFailure(); });
  tally.Print("raw bytes");
  EXPECT_GT(tally.refused, 0u);
  ExpectServing();
}

}  // namespace
}  // namespace sy::router
