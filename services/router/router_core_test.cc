// RouterCore with in-memory fake backends: validation, admission, request ids,
// least-outstanding balancing, cancellation. No network.
#include "services/router/router_core.h"

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/router/fake_attention_backend.h"

namespace sy::router {
namespace {

using ::testing::HasSubstr;

// Collects what the core hands back for one request.
struct Sink {
  std::mutex mu;
  std::vector<int32_t> tokens;
  engine::FinishReason finish = engine::FinishReason::kNone;
  bool done = false;
  absl::Status status;
  std::optional<engine::RequestTimings> timings;
  int prompt_logprobs = 0;  // updates that carried them

  BackendCallbacks Callbacks() {
    BackendCallbacks cb;
    cb.on_update = [this](engine::RequestUpdate u) {
      std::lock_guard<std::mutex> lock(mu);
      tokens.insert(tokens.end(), u.new_tokens.begin(), u.new_tokens.end());
      if (u.finish != engine::FinishReason::kNone) finish = u.finish;
      if (u.timings.has_value()) timings = u.timings;
      if (u.prompt_logprobs.has_value()) ++prompt_logprobs;
    };
    cb.on_done = [this](absl::Status s) {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
      status = std::move(s);
    };
    return cb;
  }
};

class RouterCoreTest : public ::testing::Test {
 protected:
  void MakeCore(int64_t max_queue = 8, bool sticky = false) {
    RouterCoreOptions options;
    options.limits = api::Limits{512, 512, 256, 20};
    options.max_queue = max_queue;
    options.sticky_client_ids = sticky;
    core_ = std::make_unique<RouterCore>(options, [this](const std::string& address) {
      auto b = std::make_shared<FakeAttentionBackend>(address);
      fakes_[address] = b;
      return b;
    });
  }

  void TearDown() override {
    // Ends whatever a test left running so the core's destructor can return.
    for (auto& [a, f] : fakes_) {
      for (auto& c : f->calls()) c->Fail(absl::AbortedError("test over"));
    }
    core_.reset();
  }

  static engine::GenerationRequest Request(int prompt_len, int max_new, std::string id = "") {
    engine::GenerationRequest r;
    r.id = std::move(id);
    r.prompt.assign(prompt_len, 7);
    r.stopping.max_new_tokens = max_new;
    return r;
  }

  std::shared_ptr<RouterCall> MustSubmit(engine::GenerationRequest r, Sink* sink) {
    auto call = core_->Submit(std::move(r), Deadline::max(), sink->Callbacks());
    EXPECT_TRUE(call.ok()) << call.status();
    return call.ok() ? *call : nullptr;
  }

  std::shared_ptr<FakeBackendCall> LastCall(const std::string& address) {
    auto calls = fakes_.at(address)->calls();
    return calls.empty() ? nullptr : calls.back();
  }

  int64_t Outstanding(const std::string& address) {
    for (const auto& l : core_->Loads()) {
      if (l.address == address) return l.outstanding;
    }
    return -1;
  }

  // Sinks live as long as the fixture: TearDown() may still end calls.
  Sink& NewSink() { return sinks_.emplace_back(); }

  std::unique_ptr<RouterCore> core_;
  std::map<std::string, std::shared_ptr<FakeAttentionBackend>> fakes_;
  std::deque<Sink> sinks_;
};

TEST_F(RouterCoreTest, ForwardsAndStreamsBack) {
  MakeCore();
  EXPECT_TRUE(core_->SetBackends({"a:1"}));
  Sink& sink = NewSink();
  auto call = MustSubmit(Request(3, 4), &sink);
  ASSERT_NE(call, nullptr);
  EXPECT_FALSE(call->request_id().empty());
  EXPECT_EQ(call->backend_address(), "a:1");
  auto fake = LastCall("a:1");
  ASSERT_NE(fake, nullptr);
  EXPECT_EQ(fake->request().id, call->request_id());
  EXPECT_EQ(core_->in_flight(), 1);
  fake->Emit({10, 11});
  fake->Emit({12});
  fake->Finish(engine::FinishReason::kStop);
  EXPECT_TRUE(sink.done);
  EXPECT_TRUE(sink.status.ok());
  EXPECT_EQ(sink.tokens, std::vector<int32_t>({10, 11, 12}));
  EXPECT_EQ(sink.finish, engine::FinishReason::kStop);
  EXPECT_EQ(core_->in_flight(), 0);
  EXPECT_EQ(Outstanding("a:1"), 0);
}

TEST_F(RouterCoreTest, AssignsUniqueIdsAndKeepsClientIds) {
  MakeCore();
  core_->SetBackends({"a:1"});
  Sink& s1 = NewSink();
  Sink& s2 = NewSink();
  Sink& s3 = NewSink();
  auto c1 = MustSubmit(Request(1, 1), &s1);
  auto c2 = MustSubmit(Request(1, 1), &s2);
  auto c3 = MustSubmit(Request(1, 1, "client-id"), &s3);
  EXPECT_NE(c1->request_id(), c2->request_id());
  EXPECT_EQ(c3->request_id(), "client-id");
  // The same id while the first is in flight is refused.
  Sink& s4 = NewSink();
  auto dup = core_->Submit(Request(1, 1, "client-id"), Deadline::max(), s4.Callbacks());
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(RouterCoreTest, RefusesInvalidRequestsBeforeForwarding) {
  MakeCore();
  core_->SetBackends({"a:1"});
  Sink& sink = NewSink();
  auto r = core_->Submit(Request(0, 4), Deadline::max(), sink.Callbacks());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("input_ids"));
  engine::GenerationRequest bad = Request(2, 4);
  bad.sampling.top_p = 0.0f;
  r = core_->Submit(bad, Deadline::max(), sink.Callbacks());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("sampling.top_p"));
  EXPECT_TRUE(fakes_.at("a:1")->calls().empty());
  EXPECT_FALSE(sink.done);
}

TEST_F(RouterCoreTest, UnavailableWithoutBackends) {
  MakeCore();
  EXPECT_FALSE(core_->serving());
  Sink& sink = NewSink();
  auto r = core_->Submit(Request(2, 2), Deadline::max(), sink.Callbacks());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(core_->SetBackends({"a:1"}));
  EXPECT_TRUE(core_->serving());
  EXPECT_FALSE(core_->SetBackends({}));
  EXPECT_FALSE(core_->serving());
}

TEST_F(RouterCoreTest, BoundedAdmission) {
  MakeCore(/*max_queue=*/2);
  core_->SetBackends({"a:1"});
  Sink& s1 = NewSink();
  Sink& s2 = NewSink();
  Sink& s3 = NewSink();
  Sink& s4 = NewSink();
  MustSubmit(Request(2, 2), &s1);
  MustSubmit(Request(2, 2), &s2);
  auto r = core_->Submit(Request(2, 2), Deadline::max(), s3.Callbacks());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  fakes_.at("a:1")->calls()[0]->Finish();
  EXPECT_NE(MustSubmit(Request(2, 2), &s4), nullptr);
}

TEST_F(RouterCoreTest, LeastOutstandingWork) {
  MakeCore();
  core_->SetBackends({"a:1", "b:1"});
  Sink& big = NewSink();
  Sink* s[4] = {&NewSink(), &NewSink(), &NewSink(), &NewSink()};
  auto c_big = MustSubmit(Request(4, 100), &big);
  const std::string x = c_big->backend_address();
  const std::string y = x == "a:1" ? "b:1" : "a:1";
  EXPECT_EQ(Outstanding(x), 104);
  // Small requests all go to the idle backend while the big one is heavier.
  for (int i = 0; i < 3; ++i) {
    auto c = MustSubmit(Request(4, 10), s[i]);
    EXPECT_EQ(c->backend_address(), y) << i;
  }
  EXPECT_EQ(Outstanding(y), 42);
  // Tokens streaming back shrink the big request's share: 4 + 100 - 95 = 9.
  auto fake_big = fakes_.at(x)->calls()[0];
  fake_big->Emit(std::vector<int32_t>(95, 1));
  EXPECT_EQ(Outstanding(x), 9);
  auto c4 = MustSubmit(Request(4, 10), s[3]);
  EXPECT_EQ(c4->backend_address(), x);
  EXPECT_EQ(Outstanding(x), 23);
  // Finishing releases everything the request still held.
  fake_big->Finish();
  EXPECT_EQ(Outstanding(x), 14);
}

TEST_F(RouterCoreTest, TiesAreSpread) {
  MakeCore();
  core_->SetBackends({"a:1", "b:1"});
  std::map<std::string, int> count;
  for (int i = 0; i < 4; ++i) {
    Sink& sink = NewSink();
    auto c = MustSubmit(Request(2, 2), &sink);
    ++count[c->backend_address()];
    LastCall(c->backend_address())->Finish();
  }
  EXPECT_EQ(count["a:1"], 2);
  EXPECT_EQ(count["b:1"], 2);
}

TEST_F(RouterCoreTest, CancelReachesTheBackend) {
  MakeCore();
  core_->SetBackends({"a:1"});
  Sink& sink = NewSink();
  auto call = MustSubmit(Request(2, 8), &sink);
  auto fake = LastCall("a:1");
  fake->Emit({5});
  call->Cancel();
  EXPECT_TRUE(fake->cancelled());
  EXPECT_TRUE(sink.done);
  EXPECT_EQ(sink.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(core_->in_flight(), 0);
  EXPECT_EQ(Outstanding("a:1"), 0);
  call->Cancel();  // idempotent after the end
}

TEST_F(RouterCoreTest, DeadlineIsPassedOn) {
  MakeCore();
  core_->SetBackends({"a:1"});
  Sink& sink = NewSink();
  const Deadline d = std::chrono::system_clock::now() + std::chrono::seconds(5);
  auto call = core_->Submit(Request(2, 2), d, sink.Callbacks());
  ASSERT_TRUE(call.ok());
  EXPECT_EQ(LastCall("a:1")->deadline(), d);
}

TEST_F(RouterCoreTest, MembershipChangesKeepLoadAndRunningRequests) {
  MakeCore();
  core_->SetBackends({"a:1"});
  Sink& s1 = NewSink();
  Sink& s2 = NewSink();
  MustSubmit(Request(4, 10), &s1);
  auto fake_a = fakes_.at("a:1");
  // Keeping a:1 keeps its backend object and load; b:1 joins.
  core_->SetBackends({"b:1", "a:1"});
  EXPECT_EQ(fakes_.at("a:1"), fake_a);
  EXPECT_EQ(Outstanding("a:1"), 14);
  EXPECT_EQ(Outstanding("b:1"), 0);
  // a:1 leaves; its request still completes.
  core_->SetBackends({"b:1"});
  EXPECT_EQ(Outstanding("a:1"), -1);
  auto c2 = MustSubmit(Request(1, 1), &s2);
  EXPECT_EQ(c2->backend_address(), "b:1");
  fake_a->calls()[0]->Emit({1});
  fake_a->calls()[0]->Finish();
  EXPECT_TRUE(s1.done);
  EXPECT_TRUE(s1.status.ok());
  EXPECT_EQ(core_->in_flight(), 1);
}

TEST_F(RouterCoreTest, BackendErrorIsPassedOn) {
  MakeCore();
  core_->SetBackends({"a:1"});
  Sink& sink = NewSink();
  MustSubmit(Request(2, 2), &sink);
  LastCall("a:1")->Fail(absl::UnavailableError("worker gone"));
  EXPECT_EQ(sink.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(core_->in_flight(), 0);
}

TEST_F(RouterCoreTest, StreamEndingWithoutFinishReasonIsInternal) {
  MakeCore();
  core_->SetBackends({"a:1"});
  Sink& sink = NewSink();
  MustSubmit(Request(2, 2), &sink);
  auto fake = LastCall("a:1");
  fake->Emit({1});
  fake->Fail(absl::OkStatus());
  EXPECT_EQ(sink.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(sink.status.message()), HasSubstr("without a finish reason"));
}

// The attention worker of a stream dies: the router re-submits the request
// to the other one with the prompt plus the tokens streamed so far and the
// rest of the budget; the caller sees one stream with no gap or duplicate,
// and a usage that counts the original prompt and every token.
TEST_F(RouterCoreTest, AStreamCutByADeadBackendGoesOnOnAnother) {
  MakeCore();
  core_->SetBackends({"a:1", "b:1"});
  Sink& sink = NewSink();
  engine::GenerationRequest r = Request(3, 5, "stream-1");
  r.prompt = {1, 2, 3};
  r.stopping.min_new_tokens = 3;
  r.prompt_logprobs = 0;
  auto call = MustSubmit(r, &sink);
  ASSERT_NE(call, nullptr);
  const std::string first = call->backend_address();
  const std::string other = first == "a:1" ? "b:1" : "a:1";
  auto fake = LastCall(first);
  fake->Emit({4, 5});
  fake->Fail(absl::UnavailableError("connection reset"));
  EXPECT_FALSE(sink.done) << "the caller hears nothing of the failure";
  auto resumed = LastCall(other);
  ASSERT_NE(resumed, nullptr);
  EXPECT_EQ(resumed->request().id, "stream-1");
  EXPECT_EQ(resumed->request().prompt, std::vector<int32_t>({1, 2, 3, 4, 5}));
  EXPECT_EQ(resumed->request().stopping.max_new_tokens, 3);
  EXPECT_EQ(resumed->request().stopping.min_new_tokens, 1);
  EXPECT_EQ(resumed->request().prompt_logprobs, -1);
  EXPECT_EQ(Outstanding(first), 0);
  EXPECT_EQ(Outstanding(other), 3 + 3);  // its prompt + the tokens left, as for any request
  EXPECT_EQ(core_->in_flight(), 1);
  resumed->Emit({6, 7});
  resumed->Emit({8});
  resumed->Finish();
  EXPECT_TRUE(sink.done);
  EXPECT_TRUE(sink.status.ok()) << sink.status;
  EXPECT_EQ(sink.tokens, std::vector<int32_t>({4, 5, 6, 7, 8}));
  EXPECT_EQ(sink.finish, engine::FinishReason::kLength);
  ASSERT_TRUE(sink.timings.has_value());
  EXPECT_EQ(sink.timings->prompt_tokens, 3);
  EXPECT_EQ(sink.timings->output_tokens, 5);
  EXPECT_EQ(core_->in_flight(), 0);
  EXPECT_EQ(Outstanding(other), 0);
}

// Only an UNAVAILABLE end of a live request is re-submitted: another error,
// or a request the client cancelled, ends the call; so does running out of
// backends not yet tried.
TEST_F(RouterCoreTest, OnlyUnavailableLiveRequestsAreResubmittedAndNotForever) {
  MakeCore();
  core_->SetBackends({"a:1", "b:1"});
  Sink& invalid = NewSink();
  auto c1 = MustSubmit(Request(2, 4), &invalid);
  LastCall(c1->backend_address())->Fail(absl::InvalidArgumentError("bad"));
  EXPECT_EQ(invalid.status.code(), absl::StatusCode::kInvalidArgument);

  Sink& cancelled = NewSink();
  auto c2 = MustSubmit(Request(2, 4, "cancelled"), &cancelled);
  c2->Cancel();  // the fake ends a cancelled call at once
  LastCall(c2->backend_address())->Fail(absl::UnavailableError("gone"));
  EXPECT_EQ(cancelled.status.code(), absl::StatusCode::kCancelled);
  for (const auto& [a, f] : fakes_) {
    int starts = 0;
    for (const auto& c : f->calls()) starts += c->request().id == "cancelled" ? 1 : 0;
    EXPECT_EQ(starts, a == c2->backend_address() ? 1 : 0) << a;
  }

  Sink& twice = NewSink();
  auto c3 = MustSubmit(Request(2, 4), &twice);
  const std::string first = c3->backend_address();
  const std::string other = first == "a:1" ? "b:1" : "a:1";
  LastCall(first)->Emit({9});
  LastCall(first)->Fail(absl::UnavailableError("gone"));
  EXPECT_FALSE(twice.done);
  LastCall(other)->Fail(absl::UnavailableError("gone too"));
  EXPECT_TRUE(twice.done);
  EXPECT_EQ(twice.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(twice.status.message()), HasSubstr("gone too"));
  EXPECT_EQ(twice.tokens, std::vector<int32_t>({9}));
  EXPECT_EQ(core_->in_flight(), 0);
  for (const auto& l : core_->Loads()) EXPECT_EQ(l.outstanding, 0) << l.address;
}

// Sticky client ids: a client-chosen id goes to the backend it ranks first
// by rendezvous hashing, whatever the load and whichever router (a second
// core with the backends listed in another order picks the same), and a
// failover re-submission to the next in its ranking; router-assigned ids
// still go by load.
TEST_F(RouterCoreTest, StickyClientIdsGoWhereTheirIdHashes) {
  MakeCore(/*max_queue=*/64, /*sticky=*/true);
  const std::vector<std::string> addresses = {"a:1", "b:1", "c:1"};
  core_->SetBackends(addresses);
  auto ranked = [&](const std::string& id) {
    std::vector<std::string> r = addresses;
    std::sort(r.begin(), r.end(), [&](const std::string& x, const std::string& y) {
      return RendezvousScore(id, x) > RendezvousScore(id, y);
    });
    return r;
  };
  // Load one backend heavily: sticky ids ignore it.
  Sink& heavy = NewSink();
  auto big = MustSubmit(Request(400, 100), &heavy);
  const std::string loaded = big->backend_address();
  std::map<std::string, int> spread;
  for (int i = 0; i < 30; ++i) {
    const std::string id = "client-" + std::to_string(i);
    Sink& sink = NewSink();
    auto call = MustSubmit(Request(2, 2, id), &sink);
    ASSERT_NE(call, nullptr);
    EXPECT_EQ(call->backend_address(), ranked(id)[0]) << id;
    ++spread[call->backend_address()];
  }
  EXPECT_EQ(spread.size(), 3u) << "30 ids all hashed to one backend";
  EXPECT_GT(spread[loaded], 0);
  // Another router with the backends in another order agrees.
  RouterCoreOptions options;
  options.limits = api::Limits{512, 512, 256, 20};
  options.sticky_client_ids = true;
  std::vector<std::shared_ptr<FakeAttentionBackend>> other_fakes;
  {
    RouterCore other(options, [&](const std::string& address) {
      auto b = std::make_shared<FakeAttentionBackend>(address);
      other_fakes.push_back(b);
      return b;
    });
    other.SetBackends({"c:1", "a:1", "b:1"});
    for (int i = 0; i < 30; ++i) {
      const std::string id = "client-" + std::to_string(i);
      Sink& sink = NewSink();
      auto call = other.Submit(Request(2, 2, id), Deadline::max(), sink.Callbacks());
      ASSERT_TRUE(call.ok());
      EXPECT_EQ((*call)->backend_address(), ranked(id)[0]) << id;
    }
    for (auto& f : other_fakes) {
      for (auto& c : f->calls()) c->Fail(absl::AbortedError("test over"));
    }
  }
  // Failover goes down the id's ranking.
  Sink& sink = NewSink();
  const std::string id = "client-failover";
  auto call = MustSubmit(Request(2, 4, id), &sink);
  const auto order = ranked(id);
  ASSERT_EQ(call->backend_address(), order[0]);
  LastCall(order[0])->Emit({5});
  LastCall(order[0])->Fail(absl::UnavailableError("gone"));
  auto resumed = LastCall(order[1]);
  ASSERT_NE(resumed, nullptr);
  EXPECT_EQ(resumed->request().id, id);
  resumed->Finish();
  EXPECT_TRUE(sink.status.ok()) << sink.status;
  // Router-assigned ids avoid the loaded backend.
  for (int i = 0; i < 3; ++i) {
    Sink& s = NewSink();
    auto c = MustSubmit(Request(2, 2), &s);
    EXPECT_NE(c->backend_address(), loaded);
  }
}

}  // namespace
}  // namespace sy::router
