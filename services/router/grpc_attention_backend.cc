#include "services/router/grpc_attention_backend.h"

#include <grpcpp/grpcpp.h>

#include <utility>

#include "services/api/convert.h"

namespace sy::router {
namespace {

namespace v1 = ::switchyard::v1;

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
  }

  void Begin(std::shared_ptr<GrpcCall> self) {
    self_ = std::move(self);
    backend_->stub()->async()->Generate(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void Cancel() override { context_.TryCancel(); }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // end of stream; OnDone follows
    callbacks_.on_update(api::FromProto(response_));
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
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
};

}  // namespace

GrpcAttentionBackend::GrpcAttentionBackend(std::string address)
    : address_(std::move(address)),
      stub_(switchyard::internal::v1::AttentionWorker::NewStub(
          grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()))) {}

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
