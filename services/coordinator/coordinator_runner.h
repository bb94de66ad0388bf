// The coordinator from its cluster config: builds the initial placement from
// the model's MoE layers, serves switchyard.internal.v1.Coordinator on
// `listen` and expires silent workers until `should_stop` returns true. Used
// by switchyard-coordinator and switchyard-local's single-process mode.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "services/cluster/cluster_config.h"

namespace sy::coordinator {

absl::Status RunCoordinator(const cluster::ClusterConfig& cfg, const std::string& listen,
                            const std::function<bool()>& should_stop);

}  // namespace sy::coordinator
