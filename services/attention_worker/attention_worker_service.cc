#include "services/attention_worker/attention_worker_service.h"

#include <chrono>
#include <deque>
#include <mutex>

#include "absl/time/time.h"
#include "common/log.h"
#include "services/api/convert.h"

namespace sy::attention_worker {
namespace {

using ::switchyard::v1::GenerateStreamResponse;

// One streaming call. The step thread pushes messages through the sink side
// (OnUpdate/OnError); gRPC drives the writes. The reactor deletes itself in
// OnDone; the sink may outlive it (the core holds it until the request
// finishes), so it reaches the reactor only through `alive_` under `mu_`.
class GenerateReactor : public grpc::ServerWriteReactor<GenerateStreamResponse> {
 public:
  class Sink : public UpdateSink {
   public:
    explicit Sink(GenerateReactor* r) : reactor_(r) {}
    void OnUpdate(const engine::RequestUpdate& u) override {
      std::lock_guard<std::mutex> lock(mu_);
      if (reactor_ != nullptr) reactor_->Push(u);
    }
    void OnError(const absl::Status& st) override {
      std::lock_guard<std::mutex> lock(mu_);
      if (reactor_ != nullptr) reactor_->Fail(st);
    }
    void Detach() {
      std::lock_guard<std::mutex> lock(mu_);
      reactor_ = nullptr;
    }

   private:
    std::mutex mu_;
    GenerateReactor* reactor_;
  };

  GenerateReactor(AttentionWorkerCore* core, grpc::CallbackServerContext* ctx,
                  const ::switchyard::v1::GenerateRequest* req)
      : core_(core), ctx_(ctx) {
    auto request = api::FromProto(*req);
    if (!request.ok()) {
      Finish(api::ToGrpcStatus(request.status()));
      return;
    }
    id_ = request->id;
    const auto& md = ctx->client_metadata();
    auto dedup = md.find(api::kDedupMetadata);
    request->dedup = dedup != md.end() && dedup->second == "1";
    sink_ = std::make_shared<Sink>(this);
    const auto deadline = ctx->deadline();
    core_->Submit(*std::move(request), sink_,
                  deadline == std::chrono::system_clock::time_point::max()
                      ? absl::InfiniteFuture()
                      : absl::FromChrono(deadline));
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    writing_ = false;
    if (!ok || cancelled_) {
      // The router went away: the call still has to be finished for gRPC to
      // release it (OnDone); the core is told in OnCancel/OnDone.
      FinishCancelledLocked();
      return;
    }
    if (!queue_.empty()) queue_.pop_front();
    WriteNextLocked();
  }

  void OnCancel() override {
    {
      std::lock_guard<std::recursive_mutex> lock(mu_);
      cancelled_ = true;
      if (!writing_) FinishCancelledLocked();
    }
    if (sink_ != nullptr) core_->Release(id_, sink_.get(), DeadlinePassed());
  }

  void OnDone() override {
    if (sink_ != nullptr) {
      sink_->Detach();
      // A call that ended early (router gone, or its deadline) releases its
      // request: cancelled at the deadline, otherwise kept for a retry while
      // de-duplication is on.
      std::lock_guard<std::recursive_mutex> lock(mu_);
      if (!finished_) core_->Release(id_, sink_.get(), DeadlinePassed());
    }
    delete this;
  }

 private:
  // Called with the sink's lock held, from the step thread. A generation
  // that failed ends the call with a non-OK status, never with OK and a
  // FINISH_REASON_ERROR message (a client checking the status must see the
  // failure); tokens of that last update are still delivered first.
  void Push(const engine::RequestUpdate& u) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (u.finish == engine::FinishReason::kError) {
      engine::RequestUpdate tokens = u;
      tokens.finish = engine::FinishReason::kNone;
      tokens.timings.reset();
      if (!tokens.new_tokens.empty() || tokens.prompt_logprobs.has_value()) {
        GenerateStreamResponse msg;
        api::ToProto(tokens, &msg);
        queue_.push_back(std::move(msg));
      }
      final_status_ = FailureStatus(u);
      finished_ = true;
      WriteNextLocked();
      return;
    }
    GenerateStreamResponse msg;
    api::ToProto(u, &msg);
    queue_.push_back(std::move(msg));
    if (u.finish != engine::FinishReason::kNone) finished_ = true;
    WriteNextLocked();
  }

  // A failed generation's status: failures of the mesh or its transport
  // (a peer gone, a timeout, a placement mismatch) and a worker shutting
  // down are UNAVAILABLE, where a retry may succeed; anything else keeps its
  // code (INTERNAL by default).
  static grpc::Status FailureStatus(const engine::RequestUpdate& u) {
    const std::string what = "generation failed: " + u.error;
    switch (u.error_code) {
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kDeadlineExceeded:
      case absl::StatusCode::kFailedPrecondition:
      case absl::StatusCode::kDataLoss:
      case absl::StatusCode::kAborted:
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, what);
      case absl::StatusCode::kOk:
        return grpc::Status(grpc::StatusCode::INTERNAL, what);
      default:
        return grpc::Status(static_cast<grpc::StatusCode>(u.error_code), what);
    }
  }

  bool DeadlinePassed() const { return ctx_->deadline() <= std::chrono::system_clock::now(); }

  void Fail(const absl::Status& st) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    finished_ = true;
    // Mid-stream (a retry took the request over) the call ends with this
    // once the messages already queued are written.
    final_status_ = api::ToGrpcStatus(st);
    if (!finish_called_ && !writing_) {
      finish_called_ = true;
      Finish(api::ToGrpcStatus(st));
    }
  }

  void FinishCancelledLocked() {
    if (finish_called_) return;
    finish_called_ = true;
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled"));
  }

  void WriteNextLocked() {
    if (writing_ || finish_called_ || cancelled_) return;
    if (!queue_.empty()) {
      writing_ = true;
      StartWrite(&queue_.front());
      return;
    }
    if (finished_) {
      finish_called_ = true;
      Finish(final_status_);
    }
  }

  AttentionWorkerCore* core_;
  grpc::CallbackServerContext* ctx_;
  std::string id_;
  std::shared_ptr<Sink> sink_;
  // Recursive: gRPC may run OnWriteDone on the thread that called StartWrite
  // before that call returns.
  std::recursive_mutex mu_;
  std::deque<GenerateStreamResponse> queue_;  // front is being written while writing_
  bool writing_ = false;
  bool finished_ = false;
  bool finish_called_ = false;
  bool cancelled_ = false;
  grpc::Status final_status_ = grpc::Status::OK;  // how the call ends once the queue drains
};

}  // namespace

grpc::ServerWriteReactor<::switchyard::v1::GenerateStreamResponse>*
AttentionWorkerService::Generate(grpc::CallbackServerContext* ctx,
                                 const ::switchyard::v1::GenerateRequest* req) {
  return new GenerateReactor(core_, ctx, req);
}

grpc::ServerUnaryReactor* AttentionWorkerService::Cancel(grpc::CallbackServerContext* ctx,
                                                         const pb::CancelRequest* req,
                                                         pb::CancelResponse*) {
  if (!req->request_id().empty()) core_->Cancel(req->request_id());
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AttentionWorkerService::Stats(grpc::CallbackServerContext* ctx,
                                                        const pb::WorkerStatsRequest*,
                                                        pb::WorkerStats* resp) {
  const WorkerStatsSnapshot s = core_->stats();
  resp->set_running(s.running);
  resp->set_waiting(s.waiting);
  resp->set_kv_blocks_total(s.kv_blocks_total);
  resp->set_kv_blocks_free(s.kv_blocks_free);
  resp->set_steps(s.steps);
  resp->set_wakes_received(s.wakes_received);
  resp->set_pauses_cut_by_wake(s.pauses_cut_by_wake);
  resp->set_dedup_replayed(s.dedup_replayed);
  resp->set_dedup_attached(s.dedup_attached);
  resp->set_detached(s.detached);
  resp->set_preemptions(s.preemptions);
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AttentionWorkerService::Wake(grpc::CallbackServerContext* ctx,
                                                       const pb::WakeRequest*, pb::WakeResponse*) {
  core_->Wake();
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace sy::attention_worker
