// The main() of a worker binary (attention or expert): parses --config,
// --index, --listen and --log-level, checks the index and the transport,
// builds the UCX transport for the worker's rank, and runs the role on a
// thread until SIGINT/SIGTERM. The role may be blocked in an exchange whose
// peers are gone when a shutdown arrives; the process still exits promptly.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "services/cluster/cluster_config.h"
#include "services/cluster/process_metrics.h"
#include "transport/transport.h"

namespace sy::cluster {

using WorkerRunFn = std::function<absl::Status(
    const ClusterConfig& cfg, int32_t index, transport::Transport& transport,
    const std::string& listen, const std::function<bool()>& should_stop, ProcessMetrics* metrics)>;

// Returns the process exit code: 0 on an orderly stop, 1 when the role
// failed, 2 for bad flags or configuration.
int WorkerMain(int argc, char** argv, bool attention, const WorkerRunFn& run);

}  // namespace sy::cluster
