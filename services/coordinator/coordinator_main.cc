// switchyard-coordinator: membership, ranks, mesh bootstrap and the expert
// placement of one cluster.
//
//   switchyard-coordinator --config cluster.yaml [--listen 127.0.0.1:50100]
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/log.h"
#include "model/config.h"
#include "services/cluster/cluster_config.h"
#include "services/cluster/grpc_server.h"
#include "services/cluster/process.h"
#include "services/coordinator/coordinator_service.h"

ABSL_FLAG(std::string, config, "", "Cluster YAML (required)");
ABSL_FLAG(std::string, listen, "", "Override coordinator.listen (host:port)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Switchyard coordinator.\n  switchyard-coordinator --config FILE");
  std::vector<std::string> storage;
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  sy::LogLevel level;
  if (!sy::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << "switchyard-coordinator: bad --log-level\n";
    return 2;
  }
  sy::SetMinLogLevel(level);
  auto cfg = sy::cluster::LoadClusterConfig(absl::GetFlag(FLAGS_config));
  if (!cfg.ok()) {
    std::cerr << "switchyard-coordinator: " << cfg.status().message() << "\n";
    return 2;
  }
  auto model = sy::model::LoadModelConfig(cfg->model.path);
  if (!model.ok()) {
    std::cerr << "switchyard-coordinator: " << model.status().message() << "\n";
    return 2;
  }
  std::vector<int32_t> moe_layers;
  for (int32_t l = 0; l < model->num_layers; ++l) {
    if (model->layer_is_moe[l]) moe_layers.push_back(l);
  }
  sy::eplb::PlacementOptions po;
  po.num_workers = cfg->topology.expert_workers;
  po.redundant = cfg->placement.redundant_experts;
  po.replicate = cfg->placement.replicate;
  po.order = cfg->placement.order;
  auto placement =
      sy::eplb::InitialPlacement(moe_layers, static_cast<int32_t>(model->num_experts), po);
  if (!placement.ok()) {
    std::cerr << "switchyard-coordinator: " << cfg->source << ": " << placement.status().message()
              << "\n";
    return 2;
  }
  sy::coordinator::CoordinatorOptions co;
  co.attention_workers = cfg->topology.attention_workers;
  co.expert_workers = cfg->topology.expert_workers;
  co.worker_timeout = std::chrono::milliseconds(cfg->coordinator.worker_timeout_ms);
  sy::coordinator::CoordinatorCore core(co, *placement);
  sy::coordinator::CoordinatorService service(&core);
  const std::string listen = absl::GetFlag(FLAGS_listen).empty() ? cfg->coordinator.listen.address()
                                                                 : absl::GetFlag(FLAGS_listen);
  sy::cluster::InstallShutdownHandlers();
  auto server = sy::cluster::StartGrpcServer(listen, {&service});
  if (!server.ok()) {
    std::cerr << "switchyard-coordinator: " << server.status().message() << "\n";
    return 1;
  }
  server->SetServing({"switchyard.internal.v1.Coordinator"}, true);
  SY_LOG(INFO) << "coordinator listening on " << listen << " (port " << server->port
               << "), waiting for " << co.attention_workers << " attention and "
               << co.expert_workers << " expert workers";
  while (!sy::cluster::WaitForShutdown(std::chrono::milliseconds(cfg->coordinator.heartbeat_ms))) {
    core.ExpireSilent(std::chrono::steady_clock::now());
  }
  SY_LOG(INFO) << "coordinator shutting down";
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
