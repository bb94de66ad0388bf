// switchyard-local's single-process mode (transport.backend: inproc): the
// coordinator, every expert and attention worker and the router run as
// threads of this process, linked by the inproc transport, through the same
// run functions the separate binaries use.
#pragma once

#include "services/cluster/cluster_config.h"

namespace sy::tools {

// Runs the cluster until SIGINT/SIGTERM; prints the readiness line like the
// multi-process launcher. Returns the process exit code.
int RunSingleProcessCluster(const cluster::ClusterConfig& cfg);

}  // namespace sy::tools
