#include "services/coordinator/coordinator_metrics.h"

#include <chrono>
#include <map>
#include <string>
#include <utility>

#include "services/metrics/metrics.h"

namespace sy::coordinator {
namespace {

// A member's state, one of kStates.
const char* StateOf(const MemberInfo& m) {
  if (m.dropped) return "dropped";
  if (!m.alive) return "dead";
  if (m.joining) return "joining";
  if (!m.ready) return "loading";
  return "serving";
}

constexpr const char* kStates[] = {"serving", "loading", "joining", "dead", "dropped"};

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(const CoordinatorCore* core, const LoadWindow* window,
                                       Rebalancer* rebalancer, bool per_expert_load,
                                       cluster::ProcessMetrics& m)
    : rebalances_(prometheus::BuildCounter()
                      .Name("switchyard_coordinator_rebalances_total")
                      .Help("Rebalances by trigger (interval, threshold, operator, rejoin) and "
                            "outcome (committed, skipped, aborted).")
                      .Register(*m.registry())),
      seconds_(
          prometheus::BuildHistogram()
              .Name("switchyard_coordinator_rebalance_seconds")
              .Help("Seconds of one rebalance that committed: planning, staging, the switch.")
              .Register(*m.registry())
              .Add({}, std::vector<double>{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600})),
      moved_bytes_(prometheus::BuildCounter()
                       .Name("switchyard_coordinator_rebalance_moved_bytes_total")
                       .Help("Bytes of expert weights committed rebalances moved onto workers.")
                       .Register(*m.registry())
                       .Add({})),
      moved_experts_(prometheus::BuildCounter()
                         .Name("switchyard_coordinator_rebalance_moved_experts_total")
                         .Help("(layer, expert) copies committed rebalances placed on workers "
                               "that did not hold them.")
                         .Register(*m.registry())
                         .Add({})) {
  // Every (trigger, outcome) from the start, so that rates exist at zero.
  for (const char* trigger : {"interval", "threshold", "operator", "rejoin"}) {
    for (const char* outcome : {"committed", "skipped", "aborted"}) {
      rebalances_.Add({{"trigger", trigger}, {"outcome", outcome}});
    }
  }
  rebalancer->set_observer([this](const RebalanceRecord& r) { OnRebalance(r); });
  m.AddCollector([core, window, rebalancer, per_expert_load] {
    const MeshView mesh = core->GetMesh();
    std::vector<prometheus::MetricFamily> out;
    auto one = [&out](prometheus::MetricFamily f, double v) {
      metrics::AddSample(f, v);
      out.push_back(std::move(f));
    };
    auto workers = metrics::GaugeFamily(
        "switchyard_coordinator_workers",
        "Registered workers by role and state (serving, loading, joining, dead, dropped).");
    std::map<std::pair<std::string, std::string>, int> by_role_state;
    for (const MemberInfo& mi : mesh.members) {
      ++by_role_state[{mi.role == Role::kAttention ? "attention" : "expert", StateOf(mi)}];
    }
    for (const char* role : {"attention", "expert"}) {
      for (const char* state : kStates) {
        metrics::AddSample(workers, by_role_state[{role, state}],
                           {{"role", role}, {"state", state}});
      }
    }
    out.push_back(std::move(workers));
    one(metrics::GaugeFamily("switchyard_coordinator_mesh_ready",
                             "1 while the mesh is complete and every member alive and ready."),
        mesh.ready ? 1 : 0);
    one(metrics::GaugeFamily("switchyard_coordinator_placement_epoch",
                             "Epoch of the expert placement served."),
        static_cast<double>(mesh.epoch));
    one(metrics::GaugeFamily("switchyard_coordinator_formed_epoch",
                             "Epoch the mesh membership last formed at (re-formations move it)."),
        static_cast<double>(mesh.formed_epoch));
    one(metrics::GaugeFamily("switchyard_coordinator_rebalancing", "1 while a rebalance runs."),
        rebalancer->running() ? 1 : 0);
    one(metrics::CounterFamily("switchyard_coordinator_heartbeat_timeouts_total",
                               "Members declared dead for want of heartbeats."),
        static_cast<double>(core->heartbeat_timeouts()));
    const LoadSnapshot snap = window->Get(mesh.epoch, std::chrono::steady_clock::now());
    one(metrics::GaugeFamily("switchyard_coordinator_load_window_steps",
                             "Mesh steps of load the window holds."),
        static_cast<double>(snap.steps));
    if (snap.layer_balancedness.has_value()) {
      one(metrics::GaugeFamily("switchyard_coordinator_balancedness",
                               "Mean over MoE layers of mean / max expert-worker load, measured "
                               "on the load window (1: perfectly balanced)."),
          snap.balancedness);
      auto layers = metrics::GaugeFamily(
          "switchyard_coordinator_layer_balancedness",
          "Mean / max expert-worker load of one MoE layer on the load window.");
      for (size_t l = 0; l < snap.layer_balancedness->size(); ++l) {
        const int32_t layer =
            l < mesh.placement.layers.size() ? mesh.placement.layers[l] : static_cast<int32_t>(l);
        metrics::AddSample(layers, (*snap.layer_balancedness)[l],
                           {{"layer", std::to_string(layer)}});
      }
      out.push_back(std::move(layers));
    }
    if (per_expert_load) {
      auto load = metrics::GaugeFamily(
          "switchyard_coordinator_expert_load",
          "Tokens per mesh step routed to a logical expert, on the load window.");
      for (size_t l = 0; l < snap.logical.size(); ++l) {
        const int32_t layer =
            l < mesh.placement.layers.size() ? mesh.placement.layers[l] : static_cast<int32_t>(l);
        for (size_t e = 0; e < snap.logical[l].size(); ++e) {
          metrics::AddSample(load, snap.logical[l][e],
                             {{"layer", std::to_string(layer)}, {"expert", std::to_string(e)}});
        }
      }
      out.push_back(std::move(load));
    }
    return out;
  });
}

void CoordinatorMetrics::OnRebalance(const RebalanceRecord& r) {
  rebalances_.Add({{"trigger", r.trigger}, {"outcome", r.outcome}}).Increment();
  if (r.outcome != "committed") return;
  seconds_.Observe(r.seconds);
  moved_bytes_.Increment(static_cast<double>(r.moved_bytes));
  moved_experts_.Increment(static_cast<double>(r.moved_experts));
}

}  // namespace sy::coordinator
