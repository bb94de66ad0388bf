#include "services/coordinator/coordinator_runner.h"

#include <thread>

#include "common/log.h"
#include "common/status.h"
#include "model/config.h"
#include "services/cluster/grpc_server.h"
#include "services/coordinator/coordinator_service.h"

namespace sy::coordinator {

absl::Status RunCoordinator(const cluster::ClusterConfig& cfg, const std::string& listen,
                            const std::function<bool()>& should_stop) {
  SY_ASSIGN_OR_RETURN(model::ModelConfig model, model::LoadModelConfig(cfg.model.path));
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
  if (!placement.ok()) return Annotate(placement.status(), cfg.source);
  CoordinatorOptions co;
  co.attention_workers = cfg.topology.attention_workers;
  co.expert_workers = cfg.topology.expert_workers;
  co.worker_timeout = std::chrono::milliseconds(cfg.coordinator.worker_timeout_ms);
  CoordinatorCore core(co, *placement);
  CoordinatorService service(&core);
  SY_ASSIGN_OR_RETURN(cluster::GrpcServer server, cluster::StartGrpcServer(listen, {&service}));
  server.SetServing({"switchyard.internal.v1.Coordinator"}, true);
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
  service.Drain();
  server.server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return absl::OkStatus();
}

}  // namespace sy::coordinator
