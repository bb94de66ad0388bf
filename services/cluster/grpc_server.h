// Builds a gRPC server the way every Switchyard process runs one: the given
// services, grpc.health.v1 and server reflection, listening on one address.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"

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

// Starts a server on `address` (host:port; port 0 picks a free one) with
// `services` (not owned; must outlive the server). Unavailable when the
// address cannot be bound.
absl::StatusOr<GrpcServer> StartGrpcServer(const std::string& address,
                                           const std::vector<grpc::Service*>& services);

}  // namespace sy::cluster
