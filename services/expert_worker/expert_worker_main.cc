// switchyard-expert-worker: one expert worker of a cluster. Joins the mesh
// through the coordinator, loads only its physical slots' experts, then
// serves the lockstep MoE step: every step, for every MoE layer, receive the
// token rows of every attention worker, run the experts, send the outputs
// back.
//
//   switchyard-expert-worker --config cluster.yaml --index 0
#include <unistd.h>

#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "services/cluster/cluster_config.h"
#include "services/cluster/grpc_server.h"
#include "services/cluster/process.h"
#include "services/cluster/worker_bootstrap.h"
#include "services/moe/remote_experts.h"
#include "transport/registry.h"

ABSL_FLAG(std::string, config, "", "Cluster YAML (required)");
ABSL_FLAG(int32_t, index, 0, "This worker's index among the expert workers");
ABSL_FLAG(std::string, listen, "",
          "gRPC address; default 127.0.0.1:(expert_worker.base_port + index)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace {

int Fail(const std::string& what, const absl::Status& st) {
  std::cerr << "switchyard-expert-worker: " << what << ": " << st.message() << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Switchyard expert worker.\n  switchyard-expert-worker --config FILE --index I");
  std::vector<std::string> storage;
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  sy::LogLevel level;
  if (!sy::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << "switchyard-expert-worker: bad --log-level\n";
    return 2;
  }
  sy::SetMinLogLevel(level);
  sy::cluster::InstallShutdownHandlers();
  auto cfg = sy::cluster::LoadClusterConfig(absl::GetFlag(FLAGS_config));
  if (!cfg.ok()) return Fail("config", cfg.status());
  const int32_t index = absl::GetFlag(FLAGS_index);
  if (index < 0 || index >= cfg->topology.expert_workers) {
    std::cerr << "switchyard-expert-worker: --index " << index << " outside [0, "
              << cfg->topology.expert_workers << ")\n";
    return 2;
  }
  if (cfg->transport.backend != "ucx") {
    std::cerr << "switchyard-expert-worker: separate worker processes need transport.backend "
                 "ucx\n";
    return 2;
  }
  auto model = sy::model::LoadModelConfig(cfg->model.path);
  if (!model.ok()) return Fail("model", model.status());
  std::unique_ptr<sy::model::Checkpoint> ckpt;
  if (cfg->model.load_format != "dummy") {
    auto opened = sy::model::Checkpoint::Open(cfg->model.path);
    if (!opened.ok()) return Fail("checkpoint", opened.status());
    ckpt = *std::move(opened);
  }
  sy::transport::TransportOptions to;
  to.backend = cfg->transport.backend;
  to.rank = sy::cluster::RankOf(*cfg, false, index);
  auto transport = sy::transport::CreateTransport(to);
  if (!transport.ok()) return Fail("transport", transport.status());
  const std::string listen = absl::GetFlag(FLAGS_listen).empty()
                                 ? absl::StrCat("127.0.0.1:", cfg->expert_worker.base_port + index)
                                 : absl::GetFlag(FLAGS_listen);
  // A gRPC server for health probes.
  auto server = sy::cluster::StartGrpcServer(listen, {});
  if (!server.ok()) return Fail("gRPC server", server.status());
  auto mesh =
      sy::cluster::JoinMesh(*cfg, false, index, listen, **transport, std::chrono::seconds(120));
  if (!mesh.ok()) return Fail("joining the mesh", mesh.status());
  auto expert_server = sy::moe::ExpertServer::Create(
      *model, mesh->placement, index, mesh->ranks, transport->get(), ckpt.get(),
      cfg->model.dummy_seed, absl::Milliseconds(cfg->transport.timeout_ms), sy::kernels::Context{});
  if (!expert_server.ok()) return Fail("loading experts", expert_server.status());
  server->SetServing({}, true);
  sy::cluster::Heartbeat heartbeat(*cfg, mesh->rank);
  SY_LOG(INFO) << "expert worker " << index << " serving " << mesh->placement.slots_per_worker()
               << " slots per layer";

  // Both flags are written by the loop thread and read by main after it
  // set loop_done (release/acquire through the atomic).
  std::atomic<bool> loop_done{false};
  bool loop_failed = false;
  std::thread loop([&] {
    while (!sy::cluster::ShutdownRequested()) {
      absl::Status st = (*expert_server)->ServeStep();
      if (!st.ok()) {
        // Peers going away during a shutdown is expected; otherwise it is a failure.
        if (!sy::cluster::ShutdownRequested()) {
          loop_failed = true;
          SY_LOG(ERROR) << "expert worker " << index << ": " << st;
        }
        break;
      }
    }
    loop_done.store(true, std::memory_order_release);
    sy::cluster::RequestShutdown();
  });
  while (!sy::cluster::WaitForShutdown(std::chrono::milliseconds(500))) {
  }
  // The loop may be blocked in an exchange whose peers are gone: give it a
  // moment, then leave without unwinding under it.
  for (int i = 0; i < 20 && !loop_done.load(std::memory_order_acquire); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const bool failed = loop_done.load(std::memory_order_acquire) && loop_failed;
  SY_LOG(INFO) << "expert worker " << index << " stopped";
  std::fflush(stderr);
  _exit(failed ? 1 : 0);
}
