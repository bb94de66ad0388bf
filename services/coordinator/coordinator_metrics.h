// The coordinator's Prometheus metrics (docs/metrics.md has the table): at
// scrape time, the members by role and state, the mesh's epochs and
// readiness, the measured balancedness (overall and per MoE layer), the load
// window and heartbeat timeouts, and with per_expert_load the per-expert
// load matrix; per rebalance (the rebalancer's observer), counts by trigger
// and outcome, durations and moved bytes.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/histogram.h>

#include "services/cluster/process_metrics.h"
#include "services/coordinator/coordinator_core.h"
#include "services/coordinator/load_window.h"
#include "services/coordinator/rebalancer.h"

namespace sy::coordinator {

class CoordinatorMetrics {
 public:
  // `core`, `window` and `rebalancer` must outlive `metrics`' collectors;
  // call before rebalancer->Start().
  CoordinatorMetrics(const CoordinatorCore* core, const LoadWindow* window, Rebalancer* rebalancer,
                     bool per_expert_load, cluster::ProcessMetrics& metrics);

 private:
  void OnRebalance(const RebalanceRecord& r);

  prometheus::Family<prometheus::Counter>& rebalances_;
  prometheus::Histogram& seconds_;
  prometheus::Counter& moved_bytes_;
  prometheus::Counter& moved_experts_;
};

}  // namespace sy::coordinator
