// The attention worker's Prometheus metrics (docs/metrics.md has the table):
// per step, histograms of the batch and of the step time split into
// attention (the forward pass without its MoE exchanges: attention, norms,
// dense and shared-expert MLPs, lm_head), dispatch, waiting for the expert
// workers, combine and sampling; at scrape time, the core's sequences, KV
// blocks and counters.
//
// Threads: OnStep runs on the step thread; the collectors on the metrics
// endpoint's.
#pragma once

#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "services/attention_worker/attention_worker_core.h"
#include "services/cluster/process_metrics.h"

namespace sy::attention_worker {

class AttentionWorkerMetrics {
 public:
  explicit AttentionWorkerMetrics(prometheus::Registry& registry);
  void OnStep(const StepTimes& t);
  // Scrape-time gauges and counters of `core` (which must outlive
  // `metrics`' collectors).
  static void AddCollectors(const AttentionWorkerCore* core, cluster::ProcessMetrics& metrics);

 private:
  prometheus::Histogram& step_;
  prometheus::Histogram& attention_;
  prometheus::Histogram& dispatch_;
  prometheus::Histogram& expert_wait_;
  prometheus::Histogram& combine_;
  prometheus::Histogram& sampling_;
  prometheus::Histogram& sequences_;
  prometheus::Histogram& tokens_;
};

}  // namespace sy::attention_worker
