// The router over real gRPC on 127.0.0.1, in front of fake attention workers
// (switchyard.internal.v1.AttentionWorker servers in this file that stream
// canned tokens).
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "services/cluster/process_metrics.h"
#include "services/metrics/promtool_check.h"
#include "services/metrics/scrape.h"
#include "services/router/router_server.h"
#include "switchyard/internal/v1/cluster.grpc.pb.h"
#include "switchyard/v1/generate.grpc.pb.h"

namespace sy::router {
namespace {

namespace v1 = ::switchyard::v1;
namespace internal = ::switchyard::internal::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using HealthStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

constexpr int kVocab = 512;  // tests/data/goldens/qwen3_moe

// Polls `pred` for up to 10 s.
template <typename Pred>
bool Eventually(Pred pred) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

// A fake attention worker. Generate streams max_new_tokens tokens, one per
// message: token i = (last prompt token + 1 + i) % vocab, with canned
// logprobs when asked. A request id "hold<a>,<b>,...-rest" pauses the stream
// before tokens a, b, ... until Release(id) is called once per pause (or the
// call is cancelled, which the worker records).
class FakeWorker final : public internal::AttentionWorker::Service {
 public:
  FakeWorker() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~FakeWorker() override {
    ReleaseAll();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateStreamResponse>* writer) override {
    const std::string id = request->request_id();
    {
      std::lock_guard<std::mutex> lock(mu_);
      received_.push_back(*request);
    }
    const std::vector<int> holds = HoldsOf(id);
    const int n = request->stopping().max_new_tokens();
    const int first = request->input_ids().empty() ? 0 : request->input_ids().rbegin()[0];
    int pauses = 0;
    for (int i = 0; i < n; ++i) {
      for (int h : holds) {
        if (h == i && !WaitForRelease(context, id, ++pauses)) return Cancelled(id);
      }
      if (context->IsCancelled()) return Cancelled(id);
      v1::GenerateStreamResponse m;
      m.set_request_id(id);
      const int token = (first + 1 + i) % kVocab;
      m.add_output_ids(token);
      if (request->has_logprobs()) {
        v1::TokenLogprob* lp = m.add_logprobs();
        lp->set_token(token);
        lp->set_logprob(-0.5f * static_cast<float>(i + 1));
        for (int k = 0; k < request->logprobs(); ++k) {
          v1::TopLogprob* t = lp->add_top();
          t->set_token((token + k) % kVocab);
          t->set_logprob(-0.5f * static_cast<float>(i + 1 + k));
        }
      }
      if (i == 0 && request->has_prompt_logprobs()) {
        for (int p = 0; p < request->input_ids_size(); ++p) {
          v1::PromptLogprob* pl = m.add_prompt_logprobs();
          pl->set_present(p > 0);
          if (p > 0) {
            pl->mutable_logprob()->set_token(request->input_ids(p));
            pl->mutable_logprob()->set_logprob(-1.0f * static_cast<float>(p));
          }
        }
      }
      if (i == n - 1) {
        m.set_finish_reason(v1::FINISH_REASON_LENGTH);
        m.mutable_usage()->set_prompt_tokens(request->input_ids_size());
        m.mutable_usage()->set_completion_tokens(n);
        m.mutable_timings()->set_queue_ms(0.25);
        m.mutable_timings()->set_ttft_ms(1.5);
        m.mutable_timings()->set_total_ms(3.0);
      }
      if (!writer->Write(m)) return Cancelled(id);
    }
    return grpc::Status::OK;
  }

  void Release(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    ++releases_[id];
    cv_.notify_all();
  }
  void ReleaseAll() {
    std::lock_guard<std::mutex> lock(mu_);
    release_all_ = true;
    cv_.notify_all();
  }
  std::vector<std::string> received_ids() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> out;
    for (const auto& r : received_) out.push_back(r.request_id());
    return out;
  }
  std::vector<v1::GenerateRequest> received() const {
    std::lock_guard<std::mutex> lock(mu_);
    return received_;
  }
  bool Received(const std::string& id) const {
    for (const auto& r : received_ids()) {
      if (r == id) return true;
    }
    return false;
  }
  std::set<std::string> cancelled() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }

 private:
  static std::vector<int> HoldsOf(const std::string& id) {
    std::vector<int> out;
    if (id.rfind("hold", 0) != 0) return out;
    const std::string spec = id.substr(4, id.find('-') - 4);
    for (absl::string_view part : absl::StrSplit(spec, ',')) {
      int v;
      if (absl::SimpleAtoi(part, &v)) out.push_back(v);
    }
    return out;
  }

  // Waits until the `pause`-th release of `id`; false when the call was
  // cancelled first.
  bool WaitForRelease(grpc::ServerContext* context, const std::string& id, int pause) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!release_all_ && releases_[id] < pause) {
      if (context->IsCancelled()) return false;
      cv_.wait_for(lock, std::chrono::milliseconds(5));
    }
    return true;
  }

  grpc::Status Cancelled(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.insert(id);
    return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
  }

  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<v1::GenerateRequest> received_;
  std::map<std::string, int> releases_;
  bool release_all_ = false;
  std::set<std::string> cancelled_;
};

class RouterTest : public ::testing::Test {
 protected:
  void Start(int num_workers, int64_t max_queue = 64,
             std::shared_ptr<prometheus::Registry> metrics = nullptr) {
    for (int i = 0; i < num_workers; ++i) workers_.push_back(std::make_unique<FakeWorker>());
    RouterOptions options;
    options.listen_address = "127.0.0.1:0";
    options.model_dir = std::string(SY_SOURCE_DIR) + "/tests/data/goldens/qwen3_moe";
    options.max_queue = max_queue;
    options.max_new_tokens_limit = 256;
    for (const auto& w : workers_) options.attention_workers.push_back(w->address());
    options.metrics = std::move(metrics);
    auto server = RouterServer::Create(options);
    ASSERT_TRUE(server.ok()) << server.status();
    router_ = *std::move(server);
    auto channel = grpc::CreateChannel(router_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::Generate::NewStub(channel);
    health_ = grpc::health::v1::Health::NewStub(channel);
  }

  void TearDown() override {
    for (auto& w : workers_) w->ReleaseAll();
    router_.reset();
    workers_.clear();
  }

  static v1::GenerateRequest Request(std::vector<int> prompt, int max_new, std::string id = "") {
    v1::GenerateRequest r;
    r.set_request_id(std::move(id));
    for (int t : prompt) r.add_input_ids(t);
    r.mutable_stopping()->set_max_new_tokens(max_new);
    return r;
  }

  grpc::Status Unary(const v1::GenerateRequest& request, v1::GenerateResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    return stub_->Generate(&context, request, response);
  }

  grpc::Status Stream(const v1::GenerateRequest& request,
                      std::vector<v1::GenerateStreamResponse>* messages) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto reader = stub_->GenerateStream(&context, request);
    v1::GenerateStreamResponse m;
    while (reader->Read(&m)) messages->push_back(m);
    return reader->Finish();
  }

  HealthStatus Health(const std::string& service, grpc::StatusCode* code = nullptr) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status st = health_->Check(&context, request, &response);
    if (code != nullptr) *code = st.error_code();
    return response.status();
  }

  // Which worker received `id` (-1: none yet).
  int WorkerOf(const std::string& id) {
    for (size_t w = 0; w < workers_.size(); ++w) {
      if (workers_[w]->Received(id)) return static_cast<int>(w);
    }
    return -1;
  }

  std::vector<std::unique_ptr<FakeWorker>> workers_;
  std::unique_ptr<RouterServer> router_;
  std::unique_ptr<v1::Generate::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

TEST_F(RouterTest, UnaryGenerate) {
  Start(1);
  v1::GenerateRequest request = Request({1, 2, 3}, 5);
  request.set_logprobs(2);
  request.set_prompt_logprobs(0);
  v1::GenerateResponse response;
  grpc::Status st = Unary(request, &response);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(response.request_id().empty());
  EXPECT_THAT(response.output_ids(), ElementsAre(4, 5, 6, 7, 8));
  EXPECT_EQ(response.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(response.usage().prompt_tokens(), 3);
  EXPECT_EQ(response.usage().completion_tokens(), 5);
  EXPECT_EQ(response.timings().ttft_ms(), 1.5);
  ASSERT_EQ(response.logprobs_size(), 5);
  EXPECT_EQ(response.logprobs(4).token(), 8);
  EXPECT_EQ(response.logprobs(4).top_size(), 2);
  ASSERT_EQ(response.prompt_logprobs_size(), 3);
  EXPECT_FALSE(response.prompt_logprobs(0).present());
  EXPECT_TRUE(response.prompt_logprobs(2).present());
  // The worker got the request as sent, with the router's id.
  auto received = workers_[0]->received();
  ASSERT_EQ(received.size(), 1u);
  EXPECT_EQ(received[0].request_id(), response.request_id());
  EXPECT_EQ(received[0].logprobs(), 2);
  EXPECT_EQ(received[0].stopping().max_new_tokens(), 5);
}

// Request metrics by outcome and code, token counts and latency histograms,
// the RPC observer's counts and the core's gauges, scraped over HTTP as
// Prometheus would and accepted by promtool; the request id comes back as
// trailing metadata.
TEST_F(RouterTest, MetricsCountOutcomesTokensAndLatencies) {
  auto pm = cluster::ProcessMetrics::StartOnFreePort("127.0.0.1", "router");
  ASSERT_TRUE(pm.ok()) << pm.status();
  Start(1, 64, (*pm)->registry());
  RouterMetrics::AddCollectors(&router_->core(), **pm);

  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext context;
    v1::GenerateResponse response;
    ASSERT_TRUE(
        stub_->Generate(&context, Request({1, 2, 3}, 5, "ok-" + std::to_string(i)), &response)
            .ok());
    const auto& trailers = context.GetServerTrailingMetadata();
    const auto it = trailers.find("sy-request-id");
    ASSERT_NE(it, trailers.end());
    EXPECT_EQ(std::string(it->second.data(), it->second.size()), "ok-" + std::to_string(i));
  }
  {
    // Any id a client may choose comes back as a legal metadata value.
    grpc::ClientContext context;
    v1::GenerateResponse response;
    ASSERT_TRUE(stub_->Generate(&context, Request({1}, 1, "id\x01\xc3\xa9%"), &response).ok());
    const auto& trailers = context.GetServerTrailingMetadata();
    const auto it = trailers.find("sy-request-id");
    ASSERT_NE(it, trailers.end());
    EXPECT_EQ(std::string(it->second.data(), it->second.size()), "id%01%C3%A9%25");
  }
  {
    // A long id is cut (clients refuse more than 8 KB of metadata).
    grpc::ClientContext context;
    v1::GenerateResponse response;
    ASSERT_TRUE(
        stub_->Generate(&context, Request({1}, 1, std::string(5000, '\x7f')), &response).ok());
    const auto it = context.GetServerTrailingMetadata().find("sy-request-id");
    ASSERT_NE(it, context.GetServerTrailingMetadata().end());
    const std::string v(it->second.data(), it->second.size());
    EXPECT_LE(v.size(), 256u);
    EXPECT_EQ(v.substr(0, 6), "%7F%7F");
    EXPECT_EQ(v.substr(v.size() - 3), "...");
  }
  std::vector<v1::GenerateStreamResponse> messages;
  ASSERT_TRUE(Stream(Request({7}, 4), &messages).ok());
  v1::GenerateResponse response;
  EXPECT_EQ(Unary(Request({kVocab}, 4), &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  {
    // Cancelled by its client after 2 of its tokens.
    grpc::ClientContext context;
    auto reader = stub_->GenerateStream(&context, Request({1}, 6, "hold2-cancel"));
    v1::GenerateStreamResponse m;
    ASSERT_TRUE(reader->Read(&m));
    ASSERT_TRUE(reader->Read(&m));
    // A scrape while it is held: one request in flight.
    auto text =
        metrics::HttpGet("127.0.0.1", (*pm)->port(), "/metrics", std::chrono::milliseconds(5000));
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_THAT(*text, HasSubstr("switchyard_router_requests_in_flight 1\n"));
    EXPECT_THAT(*text, HasSubstr("switchyard_router_attention_workers 1\n"));
    context.TryCancel();
    while (reader->Read(&m)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  ASSERT_TRUE(Eventually([&] { return router_->core().in_flight() == 0; }));

  // The router finishes the cancelled call's bookkeeping just after the
  // client sees it end.
  std::string text;
  ASSERT_TRUE(Eventually([&] {
    auto t =
        metrics::HttpGet("127.0.0.1", (*pm)->port(), "/metrics", std::chrono::milliseconds(5000));
    if (!t.ok()) return false;
    text = *t;
    return text.find("outcome=\"cancelled\"") != std::string::npos;
  })) << text;
  EXPECT_THAT(text, HasSubstr("switchyard_router_requests_total{code=\"OK\",method=\"Generate\","
                              "outcome=\"ok\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("switchyard_router_requests_total{code=\"OK\",method=\""
                              "GenerateStream\",outcome=\"ok\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("switchyard_router_requests_total{code=\"INVALID_ARGUMENT\","
                              "method=\"Generate\",outcome=\"rejected\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("switchyard_router_requests_total{code=\"CANCELLED\",method=\""
                              "GenerateStream\",outcome=\"cancelled\"} 1\n"));
  // Admitted prompts: 3 + 3 + 1 + 1 + 1 + 1; tokens: 5 + 5 + 1 + 1 + 4 + 2
  // (the one-token requests have no time per output token).
  EXPECT_THAT(text, HasSubstr("switchyard_router_prompt_tokens_total 10\n"));
  EXPECT_THAT(text, HasSubstr("switchyard_router_generation_tokens_total 18\n"));
  EXPECT_THAT(text, HasSubstr("switchyard_router_time_to_first_token_seconds_count 6\n"));
  EXPECT_THAT(text, HasSubstr("switchyard_router_time_per_output_token_seconds_count 4\n"));
  EXPECT_THAT(text, HasSubstr("switchyard_router_request_duration_seconds_count 6\n"));
  EXPECT_THAT(text, HasSubstr("switchyard_router_requests_in_flight 0\n"));
  EXPECT_THAT(text, HasSubstr("switchyard_router_max_requests_in_flight 64\n"));
  EXPECT_THAT(text, HasSubstr("switchyard_router_backend_requests_in_flight{attention_worker=\"" +
                              workers_[0]->address() + "\"} 0\n"));
  // The RPC observer: every call by code.
  EXPECT_THAT(text, HasSubstr("switchyard_grpc_server_handled_total{grpc_code=\"OK\","
                              "grpc_method=\"Generate\",grpc_service=\"switchyard.v1.Generate\"} "
                              "4\n"));
  EXPECT_THAT(text,
              HasSubstr("switchyard_grpc_server_started_total{grpc_method=\"GenerateStream\","
                        "grpc_service=\"switchyard.v1.Generate\",grpc_type=\"server_stream\"} "
                        "2\n"));
  EXPECT_EQ(metrics::PromtoolCheckMetrics(text), "");
}

TEST_F(RouterTest, StreamingGenerate) {
  Start(1);
  std::vector<v1::GenerateStreamResponse> messages;
  grpc::Status st = Stream(Request({10}, 4, "my-request"), &messages);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(messages.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(messages[i].request_id(), "my-request");
    EXPECT_THAT(messages[i].output_ids(), ElementsAre(11 + i));
    EXPECT_EQ(messages[i].finish_reason(),
              i == 3 ? v1::FINISH_REASON_LENGTH : v1::FINISH_REASON_UNSPECIFIED);
    EXPECT_EQ(messages[i].has_usage(), i == 3);
  }
  EXPECT_EQ(messages[3].usage().completion_tokens(), 4);
  EXPECT_EQ(messages[3].timings().total_ms(), 3.0);
}

TEST_F(RouterTest, InvalidInputIsInvalidArgumentAndTheServerKeepsServing) {
  Start(1);
  struct Case {
    const char* name;
    v1::GenerateRequest request;
    const char* field;
  };
  std::vector<Case> cases;
  cases.push_back({"empty prompt", Request({}, 4), "input_ids must not be empty"});
  cases.push_back({"token out of vocabulary", Request({1, 2, 3, 900}, 4),
                   "input_ids[3] = 900 is outside the vocabulary [0, 512)"});
  cases.push_back({"prompt longer than the context", Request(std::vector<int>(600, 1), 4),
                   "input_ids (600 tokens)"});
  cases.push_back({"prompt + max_new_tokens over the context",
                   Request(std::vector<int>(500, 1), 100), "context limit of 512"});
  cases.push_back({"max_new_tokens over the limit", Request({1}, 300),
                   "stopping.max_new_tokens (300) exceeds the limit of 256"});
  cases.push_back({"max_new_tokens zero", Request({1}, 0), "stopping.max_new_tokens"});
  {
    v1::GenerateRequest r = Request({1}, 4);
    r.mutable_sampling()->set_top_p(0.0f);
    cases.push_back({"top_p", r, "sampling.top_p must be in (0, 1]"});
  }
  {
    v1::GenerateRequest r = Request({1}, 4);
    r.mutable_sampling()->set_temperature(-1.0f);
    cases.push_back({"temperature", r, "sampling.temperature"});
  }
  {
    v1::GenerateRequest r = Request({1}, 4);
    r.mutable_sampling()->set_top_k(-3);
    cases.push_back({"top_k", r, "sampling.top_k"});
  }
  {
    v1::GenerateRequest r = Request({1}, 4);
    r.mutable_sampling()->set_presence_penalty(5.0f);
    cases.push_back({"presence_penalty", r, "sampling.presence_penalty"});
  }
  {
    v1::GenerateRequest r = Request({1}, 4);
    r.mutable_sampling()->set_repetition_penalty(0.0f);
    cases.push_back({"repetition_penalty", r, "sampling.repetition_penalty"});
  }
  {
    v1::GenerateRequest r = Request({1}, 4);
    r.set_logprobs(21);
    cases.push_back({"logprobs", r, "logprobs (21) must be in [0, 20]"});
  }
  {
    v1::GenerateRequest r = Request({1}, 4);
    r.set_prompt_logprobs(-2);
    cases.push_back({"prompt_logprobs", r, "prompt_logprobs"});
  }
  {
    v1::GenerateRequest r = Request({1}, 4);
    r.mutable_stopping()->add_stop_token_ids(1000);
    cases.push_back({"stop token", r, "stopping.stop_token_ids[0] = 1000"});
  }
  for (const Case& c : cases) {
    v1::GenerateResponse response;
    grpc::Status st = Unary(c.request, &response);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_THAT(st.error_message(), HasSubstr(c.field)) << c.name;
    std::vector<v1::GenerateStreamResponse> messages;
    st = Stream(c.request, &messages);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name << " (stream)";
    EXPECT_THAT(st.error_message(), HasSubstr(c.field)) << c.name << " (stream)";
    EXPECT_TRUE(messages.empty());
  }
  EXPECT_TRUE(workers_[0]->received().empty());
  v1::GenerateResponse response;
  grpc::Status st = Unary(Request({1, 2}, 2), &response);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_THAT(response.output_ids(), ElementsAre(3, 4));
}

TEST_F(RouterTest, ResourceExhaustedBeyondMaxQueue) {
  Start(1, /*max_queue=*/2);
  // Two streams that pause after their first token.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>>> readers;
  for (const char* id : {"hold1-a", "hold1-b"}) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(stub_->GenerateStream(contexts.back().get(), Request({1}, 3, id)));
    v1::GenerateStreamResponse m;
    ASSERT_TRUE(readers.back()->Read(&m));
  }
  v1::GenerateResponse response;
  grpc::Status st = Unary(Request({1}, 2), &response);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  std::vector<v1::GenerateStreamResponse> messages;
  st = Stream(Request({1}, 2), &messages);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // Once they finish, there is room again.
  workers_[0]->Release("hold1-a");
  workers_[0]->Release("hold1-b");
  for (auto& reader : readers) {
    v1::GenerateStreamResponse m;
    while (reader->Read(&m)) {
    }
    EXPECT_TRUE(reader->Finish().ok());
  }
  ASSERT_TRUE(Eventually([&] { return router_->core().in_flight() == 0; }));
  st = Unary(Request({1}, 2), &response);
  EXPECT_TRUE(st.ok()) << st.error_message();
}

TEST_F(RouterTest, NoBackendIsNotServingAndUnavailable) {
  Start(0);
  EXPECT_EQ(Health(""), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Health("switchyard.v1.Generate"), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  v1::GenerateResponse response;
  grpc::Status st = Unary(Request({1}, 2), &response);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  std::vector<v1::GenerateStreamResponse> messages;
  st = Stream(Request({1}, 2), &messages);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);

  // A worker joins: serving.
  workers_.push_back(std::make_unique<FakeWorker>());
  router_->SetBackends({workers_[0]->address()});
  EXPECT_EQ(Health(""), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(Health("switchyard.v1.Generate"), grpc::health::v1::HealthCheckResponse::SERVING);
  st = Unary(Request({1}, 2), &response);
  EXPECT_TRUE(st.ok()) << st.error_message();

  // It leaves: not serving again.
  router_->SetBackends({});
  EXPECT_EQ(Health(""), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  st = Unary(Request({1}, 2), &response);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);

  grpc::StatusCode code;
  Health("no.such.Service", &code);
  EXPECT_EQ(code, grpc::StatusCode::NOT_FOUND);
}

TEST_F(RouterTest, UnreachableWorkerIsUnavailableAndTheServerKeepsServing) {
  Start(0);
  // A port held by a socket that is bound but not listening: connections to
  // it are refused, and no other process can start listening there meanwhile
  // (as it could on a port bound and released).
  const int holder = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(holder, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(holder, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(holder, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string dead = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  router_->SetBackends({dead});
  v1::GenerateResponse response;
  grpc::Status st = Unary(Request({1}, 2), &response);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  workers_.push_back(std::make_unique<FakeWorker>());
  router_->SetBackends({workers_[0]->address()});
  st = Unary(Request({1}, 2), &response);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(router_->core().in_flight(), 0);
  close(holder);
}

TEST_F(RouterTest, ClientCancelReachesTheWorker) {
  Start(1);
  grpc::ClientContext context;
  auto reader = stub_->GenerateStream(&context, Request({1}, 8, "hold2-cancel-me"));
  v1::GenerateStreamResponse m;
  ASSERT_TRUE(reader->Read(&m));
  ASSERT_TRUE(reader->Read(&m));
  context.TryCancel();
  while (reader->Read(&m)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Eventually([&] { return workers_[0]->cancelled().count("hold2-cancel-me") > 0; }));
  EXPECT_TRUE(Eventually([&] { return router_->core().in_flight() == 0; }));
  // Still serving.
  v1::GenerateResponse response;
  EXPECT_TRUE(Unary(Request({1}, 2), &response).ok());
}

TEST_F(RouterTest, UnaryClientCancelReachesTheWorker) {
  Start(1);
  grpc::ClientContext context;
  v1::GenerateResponse response;
  std::atomic<bool> finished{false};
  grpc::Status status;
  const v1::GenerateRequest request = Request({1}, 8, "hold0-unary");
  stub_->async()->Generate(&context, &request, &response, [&](grpc::Status s) {
    status = s;
    finished = true;
  });
  ASSERT_TRUE(Eventually([&] { return workers_[0]->Received("hold0-unary"); }));
  context.TryCancel();
  ASSERT_TRUE(Eventually([&] { return finished.load(); }));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Eventually([&] { return workers_[0]->cancelled().count("hold0-unary") > 0; }));
}

TEST_F(RouterTest, DeadlineReachesTheWorker) {
  Start(1);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  v1::GenerateResponse response;
  grpc::Status st = stub_->Generate(&context, Request({1}, 8, "hold1-late"), &response);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(Eventually([&] { return workers_[0]->cancelled().count("hold1-late") > 0; }));
  EXPECT_TRUE(Eventually([&] { return router_->core().in_flight() == 0; }));
}

TEST_F(RouterTest, LeastOutstandingWorkAcrossTwoWorkers) {
  Start(2);
  struct Open {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader;
  };
  std::vector<Open> open;
  auto start = [&](const std::string& id, int prompt_len, int max_new) {
    Open o;
    o.context = std::make_unique<grpc::ClientContext>();
    o.reader = stub_->GenerateStream(o.context.get(),
                                     Request(std::vector<int>(prompt_len, 1), max_new, id));
    open.push_back(std::move(o));
    EXPECT_TRUE(Eventually([&] { return WorkerOf(id) >= 0; })) << id;
    return WorkerOf(id);
  };
  // A big request (4 + 100 tokens of work) pauses at once and again after 95
  // tokens.
  const int x = start("hold0,95-big", 4, 100);
  const int y = 1 - x;
  // Small requests (4 + 10) all go to the other worker: 14, 28, 42 < 104.
  // (Round robin would alternate.)
  EXPECT_EQ(start("hold0-s1", 4, 10), y);
  EXPECT_EQ(start("hold0-s2", 4, 10), y);
  EXPECT_EQ(start("hold0-s3", 4, 10), y);
  // The big one streams 95 tokens: its work drops to 4 + 100 - 95 = 9 < 42.
  workers_[x]->Release("hold0,95-big");
  v1::GenerateStreamResponse m;
  for (int i = 0; i < 95; ++i) ASSERT_TRUE(open[0].reader->Read(&m)) << i;
  EXPECT_EQ(start("hold0-s4", 4, 10), x);
  for (const auto& l : router_->core().Loads()) {
    EXPECT_EQ(l.outstanding, l.address == workers_[x]->address() ? 9 + 14 : 42) << l.address;
  }
  for (auto& w : workers_) w->ReleaseAll();
  for (auto& o : open) {
    while (o.reader->Read(&m)) {
    }
    EXPECT_TRUE(o.reader->Finish().ok());
  }
  EXPECT_TRUE(Eventually([&] { return router_->core().in_flight() == 0; }));
  for (const auto& l : router_->core().Loads()) EXPECT_EQ(l.outstanding, 0);
}

TEST_F(RouterTest, HealthServing) {
  Start(1);
  EXPECT_EQ(Health(""), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(Health("switchyard.v1.Generate"), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(RouterTest, ModelInfo) {
  Start(1);
  grpc::ClientContext context;
  v1::ModelInfoResponse info;
  grpc::Status st = stub_->ModelInfo(&context, v1::ModelInfoRequest(), &info);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(info.architecture(), "Qwen3MoeForCausalLM");
  EXPECT_EQ(info.model_type(), "qwen3_moe");
  EXPECT_EQ(info.vocab_size(), 512);
  EXPECT_EQ(info.max_context(), 512);
  EXPECT_EQ(info.max_new_tokens_limit(), 256);
  EXPECT_EQ(info.max_logprobs(), 20);
  EXPECT_EQ(info.num_layers(), 4);
  EXPECT_EQ(info.num_experts(), 16);
  EXPECT_EQ(info.experts_per_token(), 4);
  EXPECT_EQ(info.hidden_size(), 128);
  EXPECT_EQ(info.eos_token_ids_size(), 0);
}

TEST_F(RouterTest, BadModelDirIsAnError) {
  RouterOptions options;
  options.model_dir = "/nonexistent/model";
  EXPECT_FALSE(RouterServer::Create(options).ok());
}

}  // namespace
}  // namespace sy::router
