#include "services/expert_worker/expert_worker_runner.h"

#include "common/log.h"
#include "common/status.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "services/cluster/grpc_server.h"
#include "services/cluster/worker_bootstrap.h"
#include "services/moe/remote_experts.h"

namespace sy::expert_worker {

absl::Status RunExpertWorker(const cluster::ClusterConfig& cfg, int32_t index,
                             transport::Transport& transport, const std::string& listen,
                             const std::function<bool()>& should_stop) {
  SY_ASSIGN_OR_RETURN(model::ModelConfig model, model::LoadModelConfig(cfg.model.path));
  std::unique_ptr<model::Checkpoint> ckpt;
  if (cfg.model.load_format != "dummy") {
    SY_ASSIGN_OR_RETURN(ckpt, model::Checkpoint::Open(cfg.model.path));
  }
  // A gRPC server for health probes.
  SY_ASSIGN_OR_RETURN(cluster::GrpcServer server, cluster::StartGrpcServer(listen, {}));
  SY_ASSIGN_OR_RETURN(
      cluster::JoinedMesh mesh,
      cluster::JoinMesh(cfg, false, index, listen, transport, std::chrono::seconds(120)));
  // Load the experts before the mesh may step: the workers and the router
  // wait for every worker's readiness.
  SY_LOG(INFO) << "expert worker " << index << ": loading the experts of "
               << mesh.placement.NumSlotsOf(index) << " slots x " << mesh.placement.layers.size()
               << " MoE layers";
  const auto load_start = std::chrono::steady_clock::now();
  SY_ASSIGN_OR_RETURN(
      std::unique_ptr<moe::ExpertServer> experts,
      moe::ExpertServer::Create(model, mesh.placement, index, mesh.ranks, &transport, ckpt.get(),
                                cfg.model.dummy_seed, absl::Milliseconds(cfg.transport.timeout_ms),
                                kernels::Context{}));
  SY_LOG(INFO)
      << "expert worker " << index << ": experts loaded in "
      << std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count()
      << " s; ready";
  mesh.heartbeat->SetReady();
  SY_RETURN_IF_ERROR(cluster::WaitForReadyMesh(cfg, cluster::kReadyTimeout));
  server.SetServing({}, true);
  SY_LOG(INFO) << "expert worker " << index << " serving " << mesh.placement.NumSlotsOf(index)
               << " slots per layer";
  absl::Status st;
  while (!should_stop()) {
    st = experts->ServeStep();
    if (!st.ok()) break;
  }
  server.SetServing({}, false);
  server.server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  SY_LOG(INFO) << "expert worker " << index << " stopped after " << experts->step() << " steps";
  // Peers going away during a shutdown is expected.
  if (!st.ok() && !should_stop()) return Annotate(st, "serving MoE steps");
  return absl::OkStatus();
}

}  // namespace sy::expert_worker
