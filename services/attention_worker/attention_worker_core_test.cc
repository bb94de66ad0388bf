// AttentionWorkerCore's request de-duplication, on a local engine (the
// shipped tiny Qwen3-MoE, no mesh) with the step loop on its own thread: a
// retry of a finished request gets its kept output without a second run, a
// retry of a request whose stream ended without a cancel attaches to it (or
// takes it over from a stream still open), a different request under a kept
// id is refused, and what ended without a result (cancelled, past its
// deadline, past the window) runs again.
//
// Sinks can hold the step thread inside an update (BlockAt), so a test can
// queue a release and a retry at a known point of a generation.
#include "services/attention_worker/attention_worker_core.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/loader.h"
#include "engine/model_runner.h"
#include "gtest/gtest.h"

namespace sy::attention_worker {
namespace {

using std::chrono::milliseconds;

std::unique_ptr<engine::Engine> MakeEngine() {
  engine::ModelSource src;
  src.dir = std::string(SY_SOURCE_DIR) + "/tests/data/goldens/qwen3_moe";
  auto runner = engine::LoadModelRunner(src, kernels::Context{});
  EXPECT_TRUE(runner.ok()) << runner.status();
  engine::EngineOptions opts;
  opts.kv.max_tokens = 2048;
  auto e = engine::Engine::Create(*std::move(runner), opts);
  EXPECT_TRUE(e.ok()) << e.status();
  return *std::move(e);
}

engine::GenerationRequest Req(const std::string& id, int32_t max_new, int32_t first = 1) {
  engine::GenerationRequest r;
  r.id = id;
  r.prompt = {first, 7, 42, 100, 3};
  r.stopping.max_new_tokens = max_new;
  r.stopping.ignore_eos = true;
  r.dedup = true;  // as the router marks a client-chosen id
  return r;
}

// Collects a request's updates; optionally holds the step thread inside
// update number `block_at` (1-based) until Go().
class TestSink : public UpdateSink {
 public:
  explicit TestSink(int block_at = 0) : block_at_(block_at) {}

  void OnUpdate(const engine::RequestUpdate& u) override {
    std::unique_lock<std::mutex> lock(mu_);
    tokens_.insert(tokens_.end(), u.new_tokens.begin(), u.new_tokens.end());
    ++updates_;
    if (u.finish != engine::FinishReason::kNone) {
      finish_ = u.finish;
      done_ = true;
    }
    cv_.notify_all();
    if (updates_ == block_at_) cv_.wait(lock, [this] { return go_; });
  }
  void OnError(const absl::Status& st) override {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = st;
    done_ = true;
    cv_.notify_all();
  }

  // Waits until update `block_at` holds the step thread.
  bool AwaitBlocked() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(30), [this] { return updates_ >= block_at_; });
  }
  void Go() {
    std::lock_guard<std::mutex> lock(mu_);
    go_ = true;
    cv_.notify_all();
  }
  bool AwaitDone() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(30), [this] { return done_; });
  }
  std::vector<int32_t> tokens() {
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_;
  }
  engine::FinishReason finish() {
    std::lock_guard<std::mutex> lock(mu_);
    return finish_;
  }
  absl::Status error() {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }
  int updates() {
    std::lock_guard<std::mutex> lock(mu_);
    return updates_;
  }

 private:
  const int block_at_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> tokens_;
  int updates_ = 0;
  bool go_ = false;
  bool done_ = false;
  engine::FinishReason finish_ = engine::FinishReason::kNone;
  absl::Status error_;
};

// A core on its own step thread.
class CoreRunner {
 public:
  explicit CoreRunner(absl::Duration window) {
    AttentionWorkerCoreOptions o;
    o.dedup_window = window;
    core_ = std::make_unique<AttentionWorkerCore>(MakeEngine(), nullptr, o);
    thread_ = std::thread([this] { status_ = core_->Run(); });
  }
  ~CoreRunner() {
    core_->Stop();
    thread_.join();
    EXPECT_TRUE(status_.ok()) << status_;
  }
  AttentionWorkerCore& core() { return *core_; }
  // Submits `r` with a sink that holds the step thread in update `block_at`,
  // and waits for that (null if it never comes).
  std::shared_ptr<TestSink> SubmitHeld(const engine::GenerationRequest& r, int block_at,
                                       absl::Time deadline = absl::InfiniteFuture()) {
    auto sink = std::make_shared<TestSink>(block_at);
    core_->Submit(r, sink, deadline);
    return sink->AwaitBlocked() ? sink : nullptr;
  }
  // Waits until the engine is idle and every KV block is free.
  bool AwaitIdle() {
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30)) {
      const WorkerStatsSnapshot s = core_->stats();
      if (s.running + s.waiting == 0 && s.kv_blocks_free == s.kv_blocks_total && s.detached == 0) {
        return true;
      }
      std::this_thread::sleep_for(milliseconds(5));
    }
    return false;
  }

 private:
  std::unique_ptr<AttentionWorkerCore> core_;
  std::thread thread_;
  absl::Status status_;
};

// The tokens a request produces on a fresh core without de-duplication.
std::vector<int32_t> Reference(const engine::GenerationRequest& r) {
  CoreRunner run(absl::ZeroDuration());
  auto sink = std::make_shared<TestSink>();
  run.core().Submit(r, sink);
  EXPECT_TRUE(sink->AwaitDone());
  EXPECT_EQ(sink->finish(), engine::FinishReason::kLength);
  return sink->tokens();
}

TEST(AttentionWorkerDedupTest, RetryOfAFinishedRequestGetsItsOutputWithoutASecondRun) {
  CoreRunner run(absl::Seconds(60));
  const auto req = Req("x", 12);
  auto first = std::make_shared<TestSink>();
  run.core().Submit(req, first);
  ASSERT_TRUE(first->AwaitDone());
  ASSERT_EQ(first->finish(), engine::FinishReason::kLength);
  ASSERT_EQ(first->tokens().size(), 12u);
  ASSERT_TRUE(run.AwaitIdle());
  const int64_t steps = run.core().stats().steps;

  auto retry = std::make_shared<TestSink>();
  run.core().Submit(req, retry);
  ASSERT_TRUE(retry->AwaitDone());
  EXPECT_EQ(retry->finish(), engine::FinishReason::kLength);
  EXPECT_EQ(retry->tokens(), first->tokens());
  EXPECT_EQ(retry->updates(), 1);  // all at once
  const WorkerStatsSnapshot s = run.core().stats();
  EXPECT_EQ(s.steps, steps);  // the engine did not run it again
  EXPECT_EQ(s.dedup_replayed, 1);
  EXPECT_EQ(s.dedup_attached, 0);
}

TEST(AttentionWorkerDedupTest, ADifferentRequestUnderAKeptIdIsRefused) {
  CoreRunner run(absl::Seconds(60));
  auto first = std::make_shared<TestSink>();
  run.core().Submit(Req("x", 4), first);
  ASSERT_TRUE(first->AwaitDone());
  for (auto other : {Req("x", 4, 2), Req("x", 5)}) {
    auto sink = std::make_shared<TestSink>();
    run.core().Submit(other, sink);
    ASSERT_TRUE(sink->AwaitDone());
    EXPECT_EQ(sink->error().code(), absl::StatusCode::kAlreadyExists) << sink->error();
    EXPECT_NE(sink->error().message().find("request_id 'x'"), std::string::npos);
    EXPECT_TRUE(sink->tokens().empty());
  }
  // Another id runs.
  auto fresh = std::make_shared<TestSink>();
  run.core().Submit(Req("y", 4, 2), fresh);
  ASSERT_TRUE(fresh->AwaitDone());
  EXPECT_EQ(fresh->finish(), engine::FinishReason::kLength);
}

TEST(AttentionWorkerDedupTest, RetryAttachesToARequestWhoseStreamEndedWithoutACancel) {
  const auto req = Req("x", 40);
  const std::vector<int32_t> want = Reference(req);
  CoreRunner run(absl::Seconds(60));
  auto first = run.SubmitHeld(req, 3);
  ASSERT_NE(first, nullptr);
  // The first stream breaks (its router died), and the client retries
  // through another router, while the step thread is inside update 3.
  run.core().Release("x", first.get(), /*cancel=*/false);
  auto retry = std::make_shared<TestSink>();
  run.core().Submit(req, retry);
  first->Go();
  ASSERT_TRUE(retry->AwaitDone());
  EXPECT_EQ(retry->finish(), engine::FinishReason::kLength);
  EXPECT_EQ(retry->tokens(), want);  // what it was given so far, then the rest: no gap, no repeat
  EXPECT_EQ(first->tokens().size(), 3u);  // the first stream got nothing after it ended
  EXPECT_EQ(first->finish(), engine::FinishReason::kNone);
  const WorkerStatsSnapshot s = run.core().stats();
  EXPECT_EQ(s.dedup_attached, 1);
  EXPECT_EQ(s.dedup_replayed, 0);
  ASSERT_TRUE(run.AwaitIdle());
}

TEST(AttentionWorkerDedupTest, RetryTakesOverARequestStillOnAnOpenStream) {
  const auto req = Req("x", 40);
  const std::vector<int32_t> want = Reference(req);
  CoreRunner run(absl::Seconds(60));
  auto first = run.SubmitHeld(req, 2);
  ASSERT_NE(first, nullptr);
  auto retry = std::make_shared<TestSink>();
  run.core().Submit(req, retry);
  first->Go();
  ASSERT_TRUE(retry->AwaitDone());
  EXPECT_EQ(retry->tokens(), want);
  ASSERT_TRUE(first->AwaitDone());
  EXPECT_EQ(first->error().code(), absl::StatusCode::kAborted) << first->error();
  // The old stream's late release changes nothing for the retry's request.
  run.core().Release("x", first.get(), /*cancel=*/true);
  ASSERT_TRUE(run.AwaitIdle());
  EXPECT_EQ(run.core().stats().dedup_attached, 1);
}

TEST(AttentionWorkerDedupTest, ARequestWithoutAResultRunsAgain) {
  const auto req = Req("x", 40);
  const std::vector<int32_t> want = Reference(req);
  CoreRunner run(absl::Seconds(60));
  // Cancelled by its client: its retry is a new run.
  auto first = run.SubmitHeld(req, 2);
  ASSERT_NE(first, nullptr);
  run.core().Cancel("x");
  first->Go();
  ASSERT_TRUE(first->AwaitDone());
  EXPECT_EQ(first->finish(), engine::FinishReason::kCancelled);
  ASSERT_TRUE(run.AwaitIdle());
  auto retry = std::make_shared<TestSink>();
  run.core().Submit(req, retry);
  ASSERT_TRUE(retry->AwaitDone());
  EXPECT_EQ(retry->tokens(), want);
  EXPECT_GT(retry->updates(), 1);  // generated, not replayed

  // Left without a stream past its deadline: cancelled, then forgotten.
  const auto late = Req("y", 400, 3);
  auto second = run.SubmitHeld(late, 2, absl::Now() + absl::Milliseconds(200));
  ASSERT_NE(second, nullptr);
  run.core().Release("y", second.get(), /*cancel=*/false);
  std::this_thread::sleep_for(milliseconds(300));  // the deadline passes meanwhile
  second->Go();
  ASSERT_TRUE(run.AwaitIdle());  // cancelled at the deadline: no blocks held
  const WorkerStatsSnapshot s = run.core().stats();
  EXPECT_EQ(s.dedup_replayed + s.dedup_attached, 0);
  auto again = run.SubmitHeld(late, 1);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->tokens().size(), 1u);  // a new run, from its first token
  run.core().Cancel("y");
  again->Go();
  ASSERT_TRUE(again->AwaitDone());
  EXPECT_EQ(run.core().stats().dedup_attached, 0);
}

TEST(AttentionWorkerDedupTest, AKeptOutputExpiresWithTheWindow) {
  CoreRunner run(absl::Milliseconds(100));
  const auto req = Req("x", 6);
  auto first = std::make_shared<TestSink>();
  run.core().Submit(req, first);
  ASSERT_TRUE(first->AwaitDone());
  std::this_thread::sleep_for(milliseconds(300));
  // A different request under the id is accepted once the window is over.
  auto other = std::make_shared<TestSink>();
  run.core().Submit(Req("x", 6, 2), other);
  ASSERT_TRUE(other->AwaitDone());
  EXPECT_EQ(other->finish(), engine::FinishReason::kLength) << other->error();
  EXPECT_EQ(run.core().stats().dedup_replayed, 0);
}

// Requests the router did not mark (router-assigned ids, failover
// re-submissions) are not kept: an ended stream cancels, a retry runs again.
TEST(AttentionWorkerDedupTest, UnmarkedRequestsAreNotKept) {
  CoreRunner run(absl::Seconds(60));
  engine::GenerationRequest req = Req("x", 6);
  req.dedup = false;
  auto first = std::make_shared<TestSink>();
  run.core().Submit(req, first);
  ASSERT_TRUE(first->AwaitDone());
  auto again = std::make_shared<TestSink>();
  run.core().Submit(req, again);
  ASSERT_TRUE(again->AwaitDone());
  EXPECT_EQ(again->tokens(), first->tokens());
  EXPECT_GT(again->updates(), 1);  // generated again
  req.stopping.max_new_tokens = 400;
  auto held = run.SubmitHeld(req, 2);
  ASSERT_NE(held, nullptr);
  run.core().Release("x", held.get(), /*cancel=*/false);
  held->Go();
  ASSERT_TRUE(run.AwaitIdle());
  EXPECT_LT(held->tokens().size(), 400u);
  EXPECT_EQ(run.core().stats().dedup_replayed + run.core().stats().dedup_attached, 0);
}

// The router's Cancel can reach the worker before the Generate it cancels:
// the stream's end then cancels the request instead of keeping it.
TEST(AttentionWorkerDedupTest, ACancelThatOvertakesItsRequestStillCancelsIt) {
  CoreRunner run(absl::Seconds(60));
  run.core().Cancel("x");
  auto held = run.SubmitHeld(Req("x", 400), 2);
  ASSERT_NE(held, nullptr);
  run.core().Release("x", held.get(), /*cancel=*/false);
  held->Go();
  ASSERT_TRUE(run.AwaitIdle());  // cancelled, not detached
  EXPECT_LT(held->tokens().size(), 400u);
  // A retry of the id runs anew.
  auto retry = std::make_shared<TestSink>();
  run.core().Submit(Req("x", 4), retry);
  ASSERT_TRUE(retry->AwaitDone());
  EXPECT_EQ(retry->finish(), engine::FinishReason::kLength);
}

TEST(AttentionWorkerDedupTest, WithoutDedupAnEndedStreamCancelsItsRequest) {
  CoreRunner run(absl::ZeroDuration());
  const auto req = Req("x", 400);
  auto first = run.SubmitHeld(req, 2);
  ASSERT_NE(first, nullptr);
  run.core().Release("x", first.get(), /*cancel=*/false);
  first->Go();
  ASSERT_TRUE(run.AwaitIdle());  // cancelled: the engine is empty, its blocks free
  EXPECT_LT(first->tokens().size(), 400u);
  // And a retry is a new run.
  auto retry = std::make_shared<TestSink>();
  run.core().Submit(Req("x", 4), retry);
  ASSERT_TRUE(retry->AwaitDone());
  EXPECT_EQ(retry->finish(), engine::FinishReason::kLength);
  EXPECT_EQ(run.core().stats().dedup_replayed, 0);
}

}  // namespace
}  // namespace sy::attention_worker
