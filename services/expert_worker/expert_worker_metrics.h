// The expert worker's Prometheus metrics (docs/metrics.md has the table):
// per step, histograms of the expert compute time and the rows served; at
// scrape time, rows received per MoE layer (summed over experts), slots and
// expert bytes held, the epochs served and staged, and what staging
// re-placements loaded or copied in.
#pragma once

#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "services/cluster/process_metrics.h"
#include "services/moe/remote_experts.h"

namespace sy::expert_worker {

class ExpertWorkerMetrics {
 public:
  // Observes `server`'s steps (set before it serves) and serves its totals
  // through `metrics`' collectors (`server` must outlive them).
  ExpertWorkerMetrics(moe::ExpertServer* server, int32_t index, cluster::ProcessMetrics& metrics);

 private:
  prometheus::Histogram& compute_;
  prometheus::Histogram& rows_;
};

}  // namespace sy::expert_worker
