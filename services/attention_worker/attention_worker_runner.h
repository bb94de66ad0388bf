// One attention worker, from its cluster config to serving: load the dense
// weights, join the mesh over `transport`, serve AttentionWorker on `listen`
// and run the step loop until `should_stop` returns true or the mesh fails.
// The switchyard-attention-worker binary runs it with a UCX transport; the
// single-process mode of switchyard-local runs several on threads with the
// inproc transport (the same code path).
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "services/cluster/cluster_config.h"
#include "services/cluster/process_metrics.h"
#include "transport/transport.h"

namespace sy::attention_worker {

absl::Status RunAttentionWorker(const cluster::ClusterConfig& cfg, int32_t index,
                                transport::Transport& transport, const std::string& listen,
                                const std::function<bool()>& should_stop,
                                cluster::ProcessMetrics* metrics = nullptr);

}  // namespace sy::attention_worker
