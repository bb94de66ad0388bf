#include "services/router/grpc_attention_backend.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "services/api/convert.h"
#include "services/security/security.h"

namespace sy::router {
namespace {

namespace v1 = ::switchyard::v1;
namespace pb = ::switchyard::internal::v1;

// One AttentionWorker/Generate call. Holds a reference to itself from Begin()
// until OnDone(), and to its backend, so the stub outlives the call.
class GrpcCall final : public BackendCall,
                       public grpc::ClientReadReactor<v1::GenerateStreamResponse> {
 public:
  GrpcCall(std::shared_ptr<GrpcAttentionBackend> backend, const engine::GenerationRequest& request,
           Deadline deadline, BackendCallbacks callbacks)
      : backend_(std::move(backend)), callbacks_(std::move(callbacks)) {
    api::ToProto(request, &request_);
    if (deadline != Deadline::max()) context_.set_deadline(deadline);
    if (request.dedup) context_.AddMetadata(api::kDedupMetadata, "1");
  }

  void Begin(std::shared_ptr<GrpcCall> self) {
    self_ = std::move(self);
    backend_->stub()->async()->Generate(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  // The worker is told to stop the request (a call that merely ends is
  // taken for a router gone, and its request kept for a retry), then the
  // call ends. Idempotent.
  void Cancel() override {
    // After the end the id may belong to a retry on another stream (one
    // that took the request over): leave it alone.
    if (done_.load() || cancelled_.exchange(true)) return;
    struct CancelCall {
      grpc::ClientContext ctx;
      pb::CancelRequest req;
      pb::CancelResponse resp;
    };
    auto* c = new CancelCall;
    c->req.set_request_id(request_.request_id());
    c->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    backend_->stub()->async()->Cancel(&c->ctx, &c->req, &c->resp,
                                      [c](const grpc::Status&) { delete c; });
    context_.TryCancel();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // end of stream; OnDone follows
    callbacks_.on_update(api::FromProto(response_));
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    done_.store(true);
    // Released last: this object may be freed when `keep` goes out of scope.
    std::shared_ptr<GrpcCall> keep = std::move(self_);
    callbacks_.on_done(api::FromGrpcStatus(status));
  }

 private:
  std::shared_ptr<GrpcAttentionBackend> backend_;
  BackendCallbacks callbacks_;
  grpc::ClientContext context_;
  v1::GenerateRequest request_;
  v1::GenerateStreamResponse response_;
  std::shared_ptr<GrpcCall> self_;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> done_{false};
};

// gRPC's callback API runs on a process-wide completion queue that is torn
// down when the last channel that used it is destroyed and set up again by
// the next call; that teardown races with new calls (an abort in gRPC's
// ref_counted.h, seen when backends came and went). So the channel to each
// attention worker's address is kept for the life of the process (a cluster
// has few addresses); a backend removed and added again reuses it.
std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address) {
  static std::mutex mu;
  static auto* channels = new std::map<std::string, std::shared_ptr<grpc::Channel>>();
  std::lock_guard<std::mutex> lock(mu);
  std::shared_ptr<grpc::Channel>& c = (*channels)[address];
  if (c == nullptr) {
    // A worker restarted at the same address is reached within half a
    // second, not after gRPC's growing reconnect backoff (the minimum is
    // also the connect timeout: seconds, for a busy machine).
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 5000);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
    c = security::InternalChannel(address, args);
  }
  return c;
}

}  // namespace

GrpcAttentionBackend::GrpcAttentionBackend(std::string address)
    : address_(std::move(address)),
      stub_(switchyard::internal::v1::AttentionWorker::NewStub(ChannelTo(address_))) {}

std::shared_ptr<GrpcAttentionBackend> GrpcAttentionBackend::Create(const std::string& address) {
  return std::shared_ptr<GrpcAttentionBackend>(new GrpcAttentionBackend(address));
}

std::shared_ptr<BackendCall> GrpcAttentionBackend::Start(const engine::GenerationRequest& request,
                                                         Deadline deadline,
                                                         BackendCallbacks callbacks) {
  auto call =
      std::make_shared<GrpcCall>(shared_from_this(), request, deadline, std::move(callbacks));
  call->Begin(call);
  return call;
}

BackendFactory GrpcBackendFactory() {
  return [](const std::string& address) -> std::shared_ptr<AttentionBackend> {
    return GrpcAttentionBackend::Create(address);
  };
}

}  // namespace sy::router
