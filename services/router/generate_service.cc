#include "services/router/generate_service.h"

#include <deque>
#include <memory>
#include <mutex>
#include <utility>

#include "common/status.h"
#include "services/api/convert.h"
#include "services/router/router_metrics.h"

namespace sy::router {
namespace {

namespace v1 = ::switchyard::v1;

// Converts and submits a request. On success the callbacks will run (on the
// backend's threads, possibly before this returns); on error they never do.
absl::StatusOr<std::shared_ptr<RouterCall>> SubmitProto(RouterCore* core,
                                                        const security::ApiKeys* keys,
                                                        grpc::CallbackServerContext* context,
                                                        const v1::GenerateRequest& proto,
                                                        BackendCallbacks callbacks) {
  if (keys != nullptr) SY_RETURN_IF_ERROR(keys->Check(*context, security::Right::kGenerate));
  absl::StatusOr<engine::GenerationRequest> request = api::FromProto(proto);
  if (!request.ok()) return request.status();
  return core->Submit(*std::move(request), context->deadline(), std::move(callbacks));
}

// Unary Generate: folds the stream into one response.
//
// Lifetime: gRPC deletes nothing; OnDone() deletes the reactor. Finish() is
// called once, only after the backend's on_done (or a refusal) and after the
// constructor has returned, and nothing touches the reactor after it.
class GenerateReactor final : public grpc::ServerUnaryReactor {
 public:
  GenerateReactor(RouterCore* core, const security::ApiKeys* keys, RouterMetrics* metrics,
                  grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
                  v1::GenerateResponse* response)
      : tracker_(metrics, "Generate", context), response_(response) {
    BackendCallbacks callbacks;
    callbacks.on_update = [this](engine::RequestUpdate u) {
      v1::GenerateStreamResponse part;
      api::ToProto(u, &part);
      std::lock_guard<std::mutex> lock(mu_);
      tracker_.Tokens(static_cast<int64_t>(u.new_tokens.size()));
      api::FoldStreamResponse(part, response_);
    };
    callbacks.on_done = [this](absl::Status status) {
      std::unique_lock<std::mutex> lock(mu_);
      done_ = true;
      status_ = std::move(status);
      MaybeFinish(lock);
    };
    auto call = SubmitProto(core, keys, context, *request, std::move(callbacks));
    std::shared_ptr<RouterCall> cancel_now;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (call.ok()) {
        call_ = *std::move(call);
        tracker_.Admitted(call_->request_id(), request->input_ids_size());
        if (response_->request_id().empty()) response_->set_request_id(call_->request_id());
        if (cancelled_) cancel_now = call_;  // OnCancel came first
      } else {
        done_ = true;
        status_ = call.status();
      }
    }
    // Outside the lock: a backend may answer a cancel with on_done at once.
    if (cancel_now != nullptr) cancel_now->Cancel();
    std::unique_lock<std::mutex> lock(mu_);
    constructed_ = true;
    MaybeFinish(lock);
  }

  void OnCancel() override {
    std::shared_ptr<RouterCall> call;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      call = call_;
    }
    if (call != nullptr) call->Cancel();
  }

  void OnDone() override { delete this; }

 private:
  // Called with `lock` held; releases it before finishing.
  void MaybeFinish(std::unique_lock<std::mutex>& lock) {
    if (!constructed_ || !done_ || finished_) return;
    finished_ = true;
    grpc::Status status = tracker_.Finish(api::ToGrpcStatus(status_));
    lock.unlock();
    Finish(std::move(status));  // the reactor may be gone after this
  }

  RequestTracker tracker_;
  v1::GenerateResponse* response_;
  std::mutex mu_;
  std::shared_ptr<RouterCall> call_;
  absl::Status status_;
  bool constructed_ = false;
  bool done_ = false;
  bool cancelled_ = false;
  bool finished_ = false;
};

// GenerateStream: one message per backend update. gRPC allows one write in
// flight, so updates queue here (bounded by max_new_tokens) until the
// previous write completes; the status follows the last write.
class GenerateStreamReactor final : public grpc::ServerWriteReactor<v1::GenerateStreamResponse> {
 public:
  GenerateStreamReactor(RouterCore* core, const security::ApiKeys* keys, RouterMetrics* metrics,
                        grpc::CallbackServerContext* context, const v1::GenerateRequest* request)
      : tracker_(metrics, "GenerateStream", context) {
    BackendCallbacks callbacks;
    callbacks.on_update = [this](engine::RequestUpdate u) {
      v1::GenerateStreamResponse message;
      api::ToProto(u, &message);
      std::unique_lock<std::mutex> lock(mu_);
      if (write_failed_) return;
      tracker_.Tokens(static_cast<int64_t>(u.new_tokens.size()));
      pending_.push_back(std::move(message));
      Advance(lock);
    };
    callbacks.on_done = [this](absl::Status status) {
      std::unique_lock<std::mutex> lock(mu_);
      done_ = true;
      status_ = std::move(status);
      Advance(lock);
    };
    auto call = SubmitProto(core, keys, context, *request, std::move(callbacks));
    std::shared_ptr<RouterCall> cancel_now;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (call.ok()) {
        call_ = *std::move(call);
        tracker_.Admitted(call_->request_id(), request->input_ids_size());
        if (cancelled_) cancel_now = call_;  // OnCancel came first
      } else {
        done_ = true;
        status_ = call.status();
      }
    }
    if (cancel_now != nullptr) cancel_now->Cancel();
    std::unique_lock<std::mutex> lock(mu_);
    constructed_ = true;
    Advance(lock);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok && !write_failed_) {
      // The client is gone: drop what is queued, stop the backend, and
      // finish once it has stopped. (gRPC keeps the reactor alive while a
      // reaction runs, so the lock can be let go here.)
      write_failed_ = true;
      pending_.clear();
      if (std::shared_ptr<RouterCall> call = call_) {
        lock.unlock();
        call->Cancel();
        lock.lock();
      }
    }
    Advance(lock);
  }

  void OnCancel() override {
    std::shared_ptr<RouterCall> call;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      call = call_;
    }
    if (call != nullptr) call->Cancel();
  }

  void OnDone() override { delete this; }

 private:
  // Starts the next write, or finishes when the backend is done and every
  // message is written. Called with `lock` held; releases it before calling
  // into gRPC (which may run reactions inline). The reactor may be gone after
  // a Finish(), so callers touch nothing after Advance().
  void Advance(std::unique_lock<std::mutex>& lock) {
    if (!constructed_ || writing_ || finished_) return;
    if (!pending_.empty()) {
      current_ = std::move(pending_.front());
      pending_.pop_front();
      writing_ = true;
      lock.unlock();
      StartWrite(&current_);
      return;
    }
    if (!done_) return;
    finished_ = true;
    grpc::Status status = tracker_.Finish(api::ToGrpcStatus(status_));
    lock.unlock();
    Finish(std::move(status));
  }

  RequestTracker tracker_;
  std::mutex mu_;
  std::shared_ptr<RouterCall> call_;
  std::deque<v1::GenerateStreamResponse> pending_;
  v1::GenerateStreamResponse current_;  // the message being written
  absl::Status status_;
  bool constructed_ = false;
  bool done_ = false;  // the backend's on_done (or a refusal) has arrived
  bool writing_ = false;
  bool write_failed_ = false;
  bool cancelled_ = false;
  bool finished_ = false;
};

}  // namespace

grpc::ServerUnaryReactor* GenerateService::Generate(grpc::CallbackServerContext* context,
                                                    const v1::GenerateRequest* request,
                                                    v1::GenerateResponse* response) {
  return new GenerateReactor(core_, keys_, metrics_, context, request, response);
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerateService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new GenerateStreamReactor(core_, keys_, metrics_, context, request);
}

grpc::ServerUnaryReactor* GenerateService::ModelInfo(grpc::CallbackServerContext* context,
                                                     const v1::ModelInfoRequest* /*request*/,
                                                     v1::ModelInfoResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (keys_ != nullptr) {
    if (absl::Status st = keys_->Check(*context, security::Right::kGenerate); !st.ok()) {
      reactor->Finish(api::ToGrpcStatus(st));
      return reactor;
    }
  }
  api::ToProto(*config_, core_->limits(), response);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace sy::router
