// The one place where every Switchyard gRPC server logs, times and counts its
// RPCs: a server interceptor that StartGrpcServer installs in every process.
// Handlers only finish their calls; a handler that knows the call's request
// id adds it as trailing metadata (kRequestIdTrailer) and the log line names
// it.
//
// Per RPC, when it ends: one log line (method, peer, request id, status
// code, duration; OK at INFO on the public API, else DEBUG; failures at
// WARNING), and, with a registry:
//   switchyard_grpc_server_started_total{grpc_service, grpc_method, grpc_type}
//   switchyard_grpc_server_handled_total{grpc_service, grpc_method, grpc_code}
//   switchyard_grpc_server_handling_seconds{grpc_service, grpc_method} (histogram)
// Health checks count like any RPC but log at DEBUG even when they fail.
#pragma once

#include <grpcpp/support/server_interceptor.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

namespace sy::cluster {

// Trailing metadata key a handler sets to the request id it served.
inline constexpr char kRequestIdTrailer[] = "sy-request-id";

struct RpcObserverOptions {
  std::string server;                             // "router", "coordinator", ... (log prefix)
  bool log_ok_at_info = false;                    // the public API: every OK call at INFO
  std::shared_ptr<prometheus::Registry> metrics;  // null: logs only
};

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcObserver(
    const RpcObserverOptions& options);

}  // namespace sy::cluster
