// The coordinator from its cluster config: builds the initial placement from
// the model's MoE layers, serves switchyard.internal.v1.Coordinator on
// `listen` and expires silent workers until `should_stop` returns true. Used
// by switchyard-coordinator and switchyard-local's single-process mode.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "eplb/placement.h"
#include "model/config.h"
#include "services/cluster/cluster_config.h"
#include "services/cluster/process_metrics.h"

namespace sy::coordinator {

// The initial placement of the config's model (its config.json) over the
// config's expert workers; errors name the config file and the keys.
// switchyard-local checks it before starting any process.
absl::StatusOr<eplb::Placement> InitialPlacementFor(const cluster::ClusterConfig& cfg);
absl::StatusOr<eplb::Placement> InitialPlacementFor(const cluster::ClusterConfig& cfg,
                                                    const model::ModelConfig& model);

absl::Status RunCoordinator(const cluster::ClusterConfig& cfg, const std::string& listen,
                            const std::function<bool()>& should_stop,
                            cluster::ProcessMetrics* metrics = nullptr);

}  // namespace sy::coordinator
