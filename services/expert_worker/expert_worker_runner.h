// One expert worker, from its cluster config to serving: join the mesh over
// `transport`, load only its slots' experts, answer health probes on
// `listen`, and serve MoE steps until `should_stop` returns true (checked
// between steps) or the mesh fails. Used by the switchyard-expert-worker
// binary (UCX) and by switchyard-local's single-process mode (inproc).
//
// `staging` (rank = this worker's index among the expert workers) carries
// expert weights between expert workers during re-placements; with the ucx
// backend and none given, the worker makes its own. Without one, staging
// reads the checkpoint.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "services/cluster/cluster_config.h"
#include "services/cluster/process_metrics.h"
#include "transport/transport.h"

namespace sy::expert_worker {

absl::Status RunExpertWorkerWithStaging(const cluster::ClusterConfig& cfg, int32_t index,
                                        transport::Transport& transport, const std::string& listen,
                                        const std::function<bool()>& should_stop,
                                        transport::Transport* staging,
                                        cluster::ProcessMetrics* metrics = nullptr);
absl::Status RunExpertWorker(const cluster::ClusterConfig& cfg, int32_t index,
                             transport::Transport& transport, const std::string& listen,
                             const std::function<bool()>& should_stop,
                             cluster::ProcessMetrics* metrics = nullptr);

}  // namespace sy::expert_worker
