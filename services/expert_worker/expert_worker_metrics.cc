#include "services/expert_worker/expert_worker_metrics.h"

#include <string>

#include "services/metrics/metrics.h"

namespace sy::expert_worker {

ExpertWorkerMetrics::ExpertWorkerMetrics(moe::ExpertServer* server, int32_t index,
                                         cluster::ProcessMetrics& m)
    : compute_(prometheus::BuildHistogram()
                   .Name("switchyard_expert_worker_compute_seconds")
                   .Help("Seconds of expert compute (the routed experts' grouped FFNs over every "
                         "MoE layer) in one mesh step.")
                   .Register(*m.registry())
                   .Add({}, metrics::StepBuckets())),
      rows_(prometheus::BuildHistogram()
                .Name("switchyard_expert_worker_step_rows")
                .Help("(token, expert) rows served in one mesh step, over every MoE layer.")
                .Register(*m.registry())
                .Add({}, metrics::CountBuckets())) {
  server->set_step_observer([this](double compute_seconds, int64_t rows) {
    compute_.Observe(compute_seconds);
    rows_.Observe(static_cast<double>(rows));
  });
  m.AddCollector([server, index] {
    const moe::ExpertServer::Totals t = server->totals();
    const eplb::Placement p = server->serving_placement();
    std::vector<prometheus::MetricFamily> out;
    auto one = [&out](prometheus::MetricFamily f, double v, const metrics::Labels& labels = {}) {
      metrics::AddSample(f, v, labels);
      out.push_back(std::move(f));
    };
    auto rows = metrics::CounterFamily(
        "switchyard_expert_worker_rows_total",
        "(token, expert) rows received from the attention workers, by model layer (summed over "
        "this worker's experts).");
    for (size_t i = 0; i < t.rows_per_layer.size() && i < p.layers.size(); ++i) {
      metrics::AddSample(rows, static_cast<double>(t.rows_per_layer[i]),
                         {{"layer", std::to_string(p.layers[i])}});
    }
    out.push_back(std::move(rows));
    one(metrics::CounterFamily("switchyard_expert_worker_steps_total", "Mesh steps served."),
        static_cast<double>(t.steps));
    one(metrics::CounterFamily("switchyard_expert_worker_dispatch_wait_seconds_total",
                               "Seconds spent waiting for the attention workers' dispatches."),
        t.wait_seconds);
    one(metrics::GaugeFamily("switchyard_expert_worker_slots",
                             "Expert slots this worker serves per MoE layer."),
        p.NumSlotsOf(index));
    one(metrics::GaugeFamily("switchyard_expert_worker_expert_bytes",
                             "Bytes of expert weights held, serving and staged together."),
        static_cast<double>(server->expert_bytes()));
    one(metrics::GaugeFamily("switchyard_expert_worker_serving_epoch",
                             "Placement epoch this worker serves."),
        static_cast<double>(server->serving_epoch()));
    one(metrics::GaugeFamily("switchyard_expert_worker_staged_epoch",
                             "Placement epoch staged beside the serving one (0: none)."),
        static_cast<double>(server->staged_epoch()));
    auto stages = metrics::CounterFamily("switchyard_expert_worker_stages_total",
                                         "Placements staged for a re-placement, by outcome.");
    metrics::AddSample(stages, static_cast<double>(t.stages), {{"outcome", "staged"}});
    metrics::AddSample(stages, static_cast<double>(t.stage_failures), {{"outcome", "failed"}});
    out.push_back(std::move(stages));
    one(metrics::CounterFamily("switchyard_expert_worker_staged_experts_total",
                               "Experts loaded or copied in to stage placements."),
        static_cast<double>(t.staged_experts));
    one(metrics::CounterFamily("switchyard_expert_worker_staged_bytes_total",
                               "Bytes of expert weights loaded or copied in to stage placements."),
        static_cast<double>(t.staged_bytes));
    one(metrics::CounterFamily("switchyard_expert_worker_kept_experts_total",
                               "Experts a staged placement shared with the serving one."),
        static_cast<double>(t.kept_experts));
    one(metrics::CounterFamily("switchyard_expert_worker_stage_seconds_total",
                               "Seconds spent staging placements."),
        t.stage_seconds);
    return out;
  });
}

}  // namespace sy::expert_worker
