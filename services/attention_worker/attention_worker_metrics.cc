#include "services/attention_worker/attention_worker_metrics.h"

#include <algorithm>

#include "services/metrics/metrics.h"

namespace sy::attention_worker {
namespace {

prometheus::Family<prometheus::Histogram>& PhaseFamily(prometheus::Registry& r) {
  return prometheus::BuildHistogram()
      .Name("switchyard_attention_worker_step_phase_seconds")
      .Help(
          "Seconds of one forward step by phase: attention (the forward pass without its MoE "
          "exchanges), dispatch, expert_wait (for the expert workers' outputs), combine, "
          "sampling (host side, after the forward pass).")
      .Register(r);
}

prometheus::Histogram& Phase(prometheus::Registry& r, const char* phase) {
  return PhaseFamily(r).Add({{"phase", phase}}, metrics::StepBuckets());
}

}  // namespace

AttentionWorkerMetrics::AttentionWorkerMetrics(prometheus::Registry& r)
    : step_(prometheus::BuildHistogram()
                .Name("switchyard_attention_worker_step_seconds")
                .Help("Seconds of one engine step that ran a forward pass, as a whole.")
                .Register(r)
                .Add({}, metrics::StepBuckets())),
      attention_(Phase(r, "attention")),
      dispatch_(Phase(r, "dispatch")),
      expert_wait_(Phase(r, "expert_wait")),
      combine_(Phase(r, "combine")),
      sampling_(Phase(r, "sampling")),
      sequences_(prometheus::BuildHistogram()
                     .Name("switchyard_attention_worker_batch_sequences")
                     .Help("Sequences in one forward step's batch.")
                     .Register(r)
                     .Add({}, metrics::CountBuckets())),
      tokens_(prometheus::BuildHistogram()
                  .Name("switchyard_attention_worker_batch_tokens")
                  .Help("Tokens (rows) of one forward step: one per decode, the prompt chunk "
                        "per prefill.")
                  .Register(r)
                  .Add({}, metrics::CountBuckets())) {}

void AttentionWorkerMetrics::OnStep(const StepTimes& t) {
  const double moe = t.moe.dispatch + t.moe.expert_wait + t.moe.combine;
  step_.Observe(t.total_seconds);
  attention_.Observe(std::max(0.0, t.step.forward_seconds - moe));
  dispatch_.Observe(t.moe.dispatch);
  expert_wait_.Observe(t.moe.expert_wait);
  combine_.Observe(t.moe.combine);
  sampling_.Observe(t.step.sample_seconds);
  sequences_.Observe(static_cast<double>(t.step.sequences));
  tokens_.Observe(static_cast<double>(t.step.tokens));
}

void AttentionWorkerMetrics::AddCollectors(const AttentionWorkerCore* core,
                                           cluster::ProcessMetrics& metrics) {
  metrics.AddCollector([core] {
    const WorkerStatsSnapshot s = core->stats();
    std::vector<prometheus::MetricFamily> out;
    auto gauge = [&out](const char* name, const char* help, double v) {
      out.push_back(metrics::GaugeFamily(name, help));
      metrics::AddSample(out.back(), v);
    };
    auto counter = [&out](const char* name, const char* help, double v) {
      out.push_back(metrics::CounterFamily(name, help));
      metrics::AddSample(out.back(), v);
    };
    gauge("switchyard_attention_worker_running_sequences", "Sequences in the running batch.",
          static_cast<double>(s.running));
    gauge("switchyard_attention_worker_waiting_sequences",
          "Sequences waiting for admission (preempted ones included).",
          static_cast<double>(s.waiting));
    gauge("switchyard_attention_worker_kv_cache_used_blocks", "KV cache blocks in use.",
          static_cast<double>(s.kv_blocks_total - s.kv_blocks_free));
    gauge("switchyard_attention_worker_kv_cache_free_blocks", "KV cache blocks free.",
          static_cast<double>(s.kv_blocks_free));
    gauge("switchyard_attention_worker_kv_cache_capacity_blocks", "KV cache blocks in all.",
          static_cast<double>(s.kv_blocks_total));
    gauge("switchyard_attention_worker_detached_requests",
          "Requests running with no stream (their router went away), kept for a retry.",
          static_cast<double>(s.detached));
    counter("switchyard_attention_worker_steps_total", "Engine steps that ran a forward pass.",
            static_cast<double>(s.steps));
    counter("switchyard_attention_worker_mesh_steps_total",
            "Mesh steps taken part in, with or without tokens.", static_cast<double>(s.mesh_steps));
    counter("switchyard_attention_worker_preemptions_total",
            "Sequences preempted for KV blocks (recomputed later).",
            static_cast<double>(s.preemptions));
    counter("switchyard_attention_worker_dedup_replayed_total",
            "Retries answered from a finished request's kept output.",
            static_cast<double>(s.dedup_replayed));
    counter("switchyard_attention_worker_dedup_attached_total",
            "Retries attached to a request still running.", static_cast<double>(s.dedup_attached));
    return out;
  });
}

}  // namespace sy::attention_worker
