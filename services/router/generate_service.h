// The public switchyard.v1.Generate service of the router, on gRPC's callback
// API: Generate (unary; collects the stream), GenerateStream (server
// streaming) and ModelInfo. Each RPC converts the request (services/api),
// hands it to RouterCore and relays the updates; a client cancel or deadline
// cancels the request on its attention worker. The server's RPC observer
// logs and times every call; a RequestTracker per Generate call records the
// router's request metrics (router_metrics.h). With API keys, a call without a key with the
// "generate" right ends UNAUTHENTICATED or PERMISSION_DENIED before anything else is looked at.
//
// Ownership: borrows the core and the model config, which must outlive the
// gRPC server. Threads: gRPC's.
#pragma once

#include "model/config.h"
#include "services/router/router_core.h"
#include "services/security/security.h"
#include "switchyard/v1/generate.grpc.pb.h"

namespace sy::router {

class RouterMetrics;

class GenerateService final : public switchyard::v1::Generate::CallbackService {
 public:
  // `keys` (may be null: no key is asked for) must outlive the service; each
  // RPC needs a key with the "generate" right.
  // `metrics` (may be null: none) must outlive the service too.
  GenerateService(RouterCore* core, const model::ModelConfig* config,
                  const security::ApiKeys* keys = nullptr, RouterMetrics* metrics = nullptr)
      : core_(core), config_(config), keys_(keys), metrics_(metrics) {}

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const switchyard::v1::GenerateRequest* request,
                                     switchyard::v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<switchyard::v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context,
      const switchyard::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* ModelInfo(grpc::CallbackServerContext* context,
                                      const switchyard::v1::ModelInfoRequest* request,
                                      switchyard::v1::ModelInfoResponse* response) override;

 private:
  RouterCore* core_;
  const model::ModelConfig* config_;
  const security::ApiKeys* keys_;
  RouterMetrics* metrics_;
};

}  // namespace sy::router
