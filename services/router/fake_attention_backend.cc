#include "services/router/fake_attention_backend.h"

namespace sy::router {

bool FakeBackendCall::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

bool FakeBackendCall::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

bool FakeBackendCall::MarkDone() {
  std::lock_guard<std::mutex> lock(mu_);
  if (done_) return false;
  done_ = true;
  return true;
}

void FakeBackendCall::Emit(const std::vector<int32_t>& tokens) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    produced_ += static_cast<int64_t>(tokens.size());
  }
  engine::RequestUpdate u;
  u.id = request_.id;
  u.new_tokens = tokens;
  callbacks_.on_update(std::move(u));
}

void FakeBackendCall::Finish(engine::FinishReason reason) {
  int64_t produced;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    produced = produced_;
  }
  engine::RequestUpdate u;
  u.id = request_.id;
  u.finish = reason;
  engine::RequestTimings t;
  t.prompt_tokens = static_cast<int64_t>(request_.prompt.size());
  t.output_tokens = produced;
  u.timings = t;
  callbacks_.on_update(std::move(u));
  if (MarkDone()) callbacks_.on_done(absl::OkStatus());
}

void FakeBackendCall::Fail(const absl::Status& status) {
  if (MarkDone()) callbacks_.on_done(status);
}

void FakeBackendCall::Cancel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
  }
  if (MarkDone()) callbacks_.on_done(absl::CancelledError("cancelled"));
}

std::shared_ptr<BackendCall> FakeAttentionBackend::Start(const engine::GenerationRequest& request,
                                                         Deadline deadline,
                                                         BackendCallbacks callbacks) {
  auto call = std::make_shared<FakeBackendCall>(request, deadline, std::move(callbacks));
  std::lock_guard<std::mutex> lock(mu_);
  calls_.push_back(call);
  return call;
}

std::vector<std::shared_ptr<FakeBackendCall>> FakeAttentionBackend::calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return calls_;
}

}  // namespace sy::router
