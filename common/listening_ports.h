// The TCP ports a process listens on, read from /proc (Linux): its socket
// file descriptors matched against the LISTEN entries of its network
// namespace's /proc/PID/net/tcp and tcp6. For logs ("the data plane listens
// on ...") and for tests that hold a process to the ports its config names.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace sy {

// Sorted, without duplicates (a port bound on IPv4 and IPv6 appears once).
// `pid` 0: this process. NotFound when the process is gone; PermissionDenied
// when its descriptors cannot be read.
absl::StatusOr<std::vector<int32_t>> ListeningTcpPorts(pid_t pid = 0);

}  // namespace sy
