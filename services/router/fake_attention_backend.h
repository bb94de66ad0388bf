// FakeAttentionBackend: an in-memory AttentionBackend for unit tests of
// RouterCore. Nothing runs by itself: Start() records the call, and the test
// drives it (Emit, Finish, Fail) from its own thread; Cancel() is recorded and
// answered with on_done(CANCELLED) on the cancelling thread.
//
// Threads: all methods are thread-safe, but a test drives one call from one
// thread at a time (the callbacks of a call must not overlap); callbacks run
// on the driving thread.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "services/router/attention_backend.h"

namespace sy::router {

class FakeBackendCall : public BackendCall {
 public:
  FakeBackendCall(engine::GenerationRequest request, Deadline deadline, BackendCallbacks callbacks)
      : request_(std::move(request)), deadline_(deadline), callbacks_(std::move(callbacks)) {}

  const engine::GenerationRequest& request() const { return request_; }
  Deadline deadline() const { return deadline_; }
  bool cancelled() const;
  bool done() const;

  // Sends `tokens` as one update (no-op once done).
  void Emit(const std::vector<int32_t>& tokens);
  // Sends the final update with `reason` and ends the call with OK.
  void Finish(engine::FinishReason reason = engine::FinishReason::kLength);
  // Ends the call with an error status.
  void Fail(const absl::Status& status);
  void Cancel() override;

 private:
  bool MarkDone();  // true for the caller that ends the call

  const engine::GenerationRequest request_;
  const Deadline deadline_;
  BackendCallbacks callbacks_;
  mutable std::mutex mu_;
  bool cancelled_ = false;
  bool done_ = false;
  int64_t produced_ = 0;
};

class FakeAttentionBackend : public AttentionBackend {
 public:
  explicit FakeAttentionBackend(std::string address) : address_(std::move(address)) {}

  const std::string& address() const override { return address_; }
  std::shared_ptr<BackendCall> Start(const engine::GenerationRequest& request, Deadline deadline,
                                     BackendCallbacks callbacks) override;

  // Every call started so far, in order.
  std::vector<std::shared_ptr<FakeBackendCall>> calls() const;

 private:
  const std::string address_;
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<FakeBackendCall>> calls_;
};

}  // namespace sy::router
