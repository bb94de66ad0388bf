// Builds a Transport by backend name: the one place that knows which
// optional backends this binary was built with.
//
//   TransportOptions options;
//   options.backend = "ucx";
//   options.rank = 3;
//   SY_ASSIGN_OR_RETURN(std::unique_ptr<Transport> transport, CreateTransport(options));
//
// The caller owns the returned Transport. Thread-safe (no shared state).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "transport/inproc/inproc_transport.h"
#include "transport/transport.h"

namespace sy::transport {

struct TransportOptions {
  // "inproc" or "ucx" (see AvailableTransportBackends()).
  std::string backend = "inproc";
  // This process's rank in the mesh, in [0, kMaxRanks).
  int32_t rank = -1;
  // inproc only, required there: the fabric shared by every rank of the
  // process (each rank's options point to the same one). Ignored otherwise.
  std::shared_ptr<inproc::Fabric> fabric;
  // ucx only: the TCP ports its listeners may bind, "FIRST-LAST" (UCX's
  // PORT_RANGE); empty: any free port.
  std::string port_range;
  // ucx only: the transport is used from more than one thread, one at a
  // time (UCS_THREAD_MODE_SERIALIZED); otherwise from one thread only.
  bool serialized = false;
};

// Names of the backends built into this binary, e.g. {"inproc", "ucx"}.
std::vector<std::string> AvailableTransportBackends();

// InvalidArgument for an unknown backend, a bad rank or a missing fabric;
// Unimplemented for a known backend left out of this build; otherwise the
// backend's own construction error (e.g. UCX initialisation).
absl::StatusOr<std::unique_ptr<Transport>> CreateTransport(const TransportOptions& options);

// Ranks 0..n-1 of one in-process mesh on a fresh fabric (single-process
// clusters, tests); not yet connected.
absl::StatusOr<std::vector<std::unique_ptr<Transport>>> CreateInprocTransports(int32_t n);

}  // namespace sy::transport
