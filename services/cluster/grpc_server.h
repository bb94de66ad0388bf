// Builds a gRPC server the way every Switchyard process runs one: the given
// services, grpc.health.v1 and server reflection, listening on one address,
// every RPC logged, timed and counted by the RPC observer (rpc_observer.h).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/registry.h"

namespace sy::cluster {

struct GrpcServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;  // the bound port (useful when asked for port 0)

  // Sets the health status of "" and of each named service.
  void SetServing(const std::vector<std::string>& services, bool serving);
};

// Empty when the gRPC server at `address` answers SERVING for `service` ("":
// the server as a whole) within `timeout`; else why not (no answer, not
// serving).
std::string HealthCheckFailure(const std::string& address, const std::string& service,
                               std::chrono::milliseconds timeout);
// The same over `channel` (the internal one above).
std::string HealthCheckFailure(const std::shared_ptr<grpc::Channel>& channel,
                               const std::string& service, std::chrono::milliseconds timeout);

// A channel to the coordinator that reconnects within half a second once
// it is back (gRPC's default backoff grows to minutes): workers and the
// router keep using theirs across a coordinator restart.
std::shared_ptr<grpc::Channel> CoordinatorChannel(const std::string& address);

struct ServerOptions {
  std::string address;                   // host:port; port 0 picks a free one
  std::vector<grpc::Service*> services;  // not owned; must outlive the server
  // null: the internal services' credentials (mutual TLS when the cluster
  // has it, security::InternalServerCredentials).
  std::shared_ptr<grpc::ServerCredentials> credentials;
  std::string name = "server";                    // for logs: "router", "coordinator", ...
  bool log_ok_at_info = false;                    // RpcObserverOptions::log_ok_at_info
  std::shared_ptr<prometheus::Registry> metrics;  // RPC metrics go here (null: none)
};

// Starts the server. Unavailable when the address cannot be bound.
absl::StatusOr<GrpcServer> StartGrpcServer(const ServerOptions& options);
// The internal services' shorthand: no metrics, default credentials.
absl::StatusOr<GrpcServer> StartGrpcServer(const std::string& address,
                                           const std::vector<grpc::Service*>& services);

}  // namespace sy::cluster
