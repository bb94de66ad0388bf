// Process plumbing shared by the Switchyard service binaries: orderly
// shutdown on SIGINT/SIGTERM, and flag spelling.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace sy::cluster {

// Installs SIGINT/SIGTERM handlers that request shutdown (idempotent).
void InstallShutdownHandlers();
// True once shutdown was requested (signal or RequestShutdown()).
bool ShutdownRequested();
void RequestShutdown();
// Sleeps until shutdown is requested or `timeout` passes; returns
// ShutdownRequested().
bool WaitForShutdown(std::chrono::milliseconds timeout);

// Rewrites "--flag-name[=v]" to abseil's "--flag_name[=v]" so flags may be
// spelled with dashes. `storage` owns the strings the result points into.
std::vector<char*> DashesToUnderscores(int argc, char** argv, std::vector<std::string>* storage);

// Makes --help list every flag of the program (abseil's default shows only
// flags defined in a file named after the binary, which none of ours is),
// leaving out abseil's own built-in flags. Call before ParseCommandLine.
void ListAllFlagsInHelp();

// The line --check-config prints after "config OK": every port the process
// would listen on, for people and for the manifest checks
// (tests/k8s_manifest_test.py), e.g.
//   "  listens on: grpc=0.0.0.0:50200 metrics=0.0.0.0:9410 ucx=50400-50407"
// `metrics_port` 0: "metrics=off"; an empty `ucx_range` leaves ucx out
// ("ucx=any" when `has_ucx` and no range is configured).
std::string ListenersLine(const std::string& grpc_address, const std::string& metrics_host,
                          int32_t metrics_port, bool has_ucx, const std::string& ucx_range);

}  // namespace sy::cluster
