#include "services/coordinator/coordinator_runner.h"

#include <algorithm>
#include <optional>
#include <thread>

#include "common/log.h"
#include "common/status.h"
#include "model/config.h"
#include "services/cluster/grpc_server.h"
#include "services/coordinator/admin_service.h"
#include "services/coordinator/coordinator_metrics.h"
#include "services/coordinator/coordinator_service.h"
#include "services/coordinator/load_window.h"
#include "services/coordinator/mesh_prober.h"
#include "services/coordinator/rebalancer.h"

namespace sy::coordinator {

absl::StatusOr<eplb::Placement> InitialPlacementFor(const cluster::ClusterConfig& cfg) {
  SY_ASSIGN_OR_RETURN(model::ModelConfig model, model::LoadModelConfig(cfg.model.path));
  return InitialPlacementFor(cfg, model);
}

absl::StatusOr<eplb::Placement> InitialPlacementFor(const cluster::ClusterConfig& cfg,
                                                    const model::ModelConfig& model) {
  std::vector<int32_t> moe_layers;
  for (int32_t l = 0; l < model.num_layers; ++l) {
    if (model.layer_is_moe[l]) moe_layers.push_back(l);
  }
  eplb::PlacementOptions po;
  po.num_workers = cfg.topology.expert_workers;
  po.redundant = cfg.placement.redundant_experts;
  po.replicate = cfg.placement.replicate;
  po.order = cfg.placement.order;
  auto placement = eplb::InitialPlacement(moe_layers, static_cast<int32_t>(model.num_experts), po);
  if (!placement.ok()) {
    return Annotate(placement.status(),
                    absl::StrCat(cfg.source, ": placement.redundant_experts (", po.redundant,
                                 ") and topology.expert_workers (", po.num_workers, ")"));
  }
  return placement;
}

absl::Status RunCoordinator(const cluster::ClusterConfig& cfg, const std::string& listen,
                            const std::function<bool()>& should_stop,
                            cluster::ProcessMetrics* metrics) {
  SY_ASSIGN_OR_RETURN(model::ModelConfig model, model::LoadModelConfig(cfg.model.path));
  SY_ASSIGN_OR_RETURN(eplb::Placement placement, InitialPlacementFor(cfg, model));
  CoordinatorOptions co;
  co.attention_workers = cfg.topology.attention_workers;
  co.expert_workers = cfg.topology.expert_workers;
  co.worker_timeout = std::chrono::milliseconds(cfg.coordinator.worker_timeout_ms);
  CoordinatorCore core(co, placement);
  // EPLB: load reports into the window, the rebalancer over both.
  LoadWindowOptions wo;
  wo.window_steps = cfg.eplb.window_steps;
  wo.window = std::chrono::milliseconds(static_cast<int64_t>(cfg.eplb.window_seconds * 1000));
  LoadWindow window(static_cast<int32_t>(placement.layers.size()), placement.num_logical,
                    cfg.topology.expert_workers, wo);
  core.SetLoadSink([&window](const eplb::Placement& p, int32_t worker, const LoadSample& s) {
    window.Add(p, worker, s, std::chrono::steady_clock::now());
  });
  // One (layer, expert)'s weights on an expert worker: gate, up and down in fp32.
  const int64_t bytes_per_expert =
      3 * model.hidden_size * model.moe_intermediate_size * static_cast<int64_t>(sizeof(float));
  Rebalancer rebalancer(&core, &window, cfg.eplb, bytes_per_expert);
  // A failed step reported by a worker: check the members, re-form the mesh.
  MeshProber prober(&core,
                    std::chrono::milliseconds(std::max<int64_t>(
                        500, std::min<int64_t>(cfg.coordinator.worker_timeout_ms / 4, 2000))));
  core.SetMeshFailureSink([&prober](int64_t epoch, int32_t rank, const std::string& why) {
    prober.Report(epoch, rank, why);
  });
  CoordinatorService service(&core);
  std::optional<security::ApiKeys> keys;
  if (!cfg.security.api_keys_file.empty()) {
    SY_ASSIGN_OR_RETURN(keys, security::ApiKeys::Load(cfg.security.api_keys_file));
  }
  AdminService admin(&core, &window, &rebalancer, keys.has_value() ? &*keys : nullptr);
  std::unique_ptr<CoordinatorMetrics> coordinator_metrics;
  if (metrics != nullptr && metrics->serving()) {
    coordinator_metrics = std::make_unique<CoordinatorMetrics>(
        &core, &window, &rebalancer, cfg.metrics.per_expert_load, *metrics);
  }
  // Stops the collectors (which read the core, window and rebalancer) when
  // this function returns.
  cluster::CollectorsOff collectors_off(metrics);
  cluster::ServerOptions so;
  so.address = listen;
  so.services = {&service, &admin};
  so.name = "coordinator";
  if (metrics != nullptr) so.metrics = metrics->registry();
  SY_ASSIGN_OR_RETURN(cluster::GrpcServer server, cluster::StartGrpcServer(so));
  server.SetServing({"switchyard.internal.v1.Coordinator", "switchyard.v1.Admin"}, true);
  rebalancer.Start();
  if (cfg.eplb.enabled) {
    SY_LOG(INFO) << "automatic rebalancing on: policy " << cfg.eplb.policy << ", planner "
                 << cfg.eplb.planner << ", threshold " << cfg.eplb.threshold << ", interval "
                 << cfg.eplb.interval_seconds << " s";
  }
  SY_LOG(INFO) << "coordinator listening on " << listen << ", waiting for " << co.attention_workers
               << " attention and " << co.expert_workers << " expert workers";
  auto next_check = std::chrono::steady_clock::now();
  while (!should_stop()) {
    if (std::chrono::steady_clock::now() >= next_check) {
      core.ExpireSilent(std::chrono::steady_clock::now());
      next_check += std::chrono::milliseconds(cfg.coordinator.heartbeat_ms);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  SY_LOG(INFO) << "coordinator shutting down";
  core.SetMeshFailureSink({});
  rebalancer.Stop();
  service.Drain();
  server.server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return absl::OkStatus();
}

}  // namespace sy::coordinator
