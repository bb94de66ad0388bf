#include "tools/local_single_process.h"

#include <atomic>
#include <iostream>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "services/attention_worker/attention_worker_runner.h"
#include "services/cluster/process.h"
#include "services/cluster/worker_bootstrap.h"
#include "services/coordinator/coordinator_runner.h"
#include "services/expert_worker/expert_worker_runner.h"
#include "services/router/router_server.h"
#include "services/security/security.h"
#include "transport/registry.h"

namespace sy::tools {
namespace {

bool Serving(const std::string& address, const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(security::InternalChannel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  return stub->Check(&ctx, req, &resp).ok() &&
         resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

}  // namespace

int RunSingleProcessCluster(const cluster::ClusterConfig& cfg) {
  // Set once (shutdown or a failed role) and read by every role's loop.
  std::atomic<bool> stop{false};
  auto should_stop = [&stop] { return stop.load() || cluster::ShutdownRequested(); };
  const int32_t A = cfg.topology.attention_workers, M = cfg.topology.expert_workers;
  auto created = transport::CreateInprocTransports(A + M);
  if (!created.ok()) {
    std::cerr << "switchyard-local: " << created.status().message() << "\n";
    return 1;
  }
  std::vector<std::unique_ptr<transport::Transport>> transports = *std::move(created);
  // The expert workers' own transport for copying expert weights.
  auto staging_created = transport::CreateInprocTransports(M);
  if (!staging_created.ok()) {
    std::cerr << "switchyard-local: " << staging_created.status().message() << "\n";
    return 1;
  }
  std::vector<std::unique_ptr<transport::Transport>> staging = *std::move(staging_created);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  auto run = [&](std::string name, std::function<absl::Status()> fn) {
    threads.emplace_back([&, name, fn] {
      absl::Status st = fn();
      if (!st.ok()) {
        std::cerr << "switchyard-local: " << name << ": " << st.message() << "\n";
        failures.fetch_add(1);
        stop.store(true);
      }
    });
  };
  run("coordinator", [&] {
    return coordinator::RunCoordinator(cfg, cfg.coordinator.listen.address(), should_stop);
  });
  for (int32_t j = 0; j < M; ++j) {
    run(absl::StrCat("expert worker ", j), [&, j] {
      return expert_worker::RunExpertWorkerWithStaging(
          cfg, j, *transports[A + j], absl::StrCat("127.0.0.1:", cfg.expert_worker.base_port + j),
          should_stop, staging[j].get());
    });
  }
  // Filled before any thread starts: the workers keep references to their entry.
  std::vector<std::string> aw_addresses;
  for (int32_t i = 0; i < A; ++i) {
    aw_addresses.push_back(absl::StrCat("127.0.0.1:", cfg.attention_worker.base_port + i));
  }
  for (int32_t i = 0; i < A; ++i) {
    run(absl::StrCat("attention worker ", i), [&, i] {
      return attention_worker::RunAttentionWorker(cfg, i, *transports[i], aw_addresses[i],
                                                  should_stop);
    });
  }
  // The router starts once every attention worker serves.
  std::unique_ptr<router::RouterServer> router;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(180);
  while (!should_stop()) {
    bool all = true;
    for (const auto& a : aw_addresses) all &= Serving(a, "switchyard.internal.v1.AttentionWorker");
    if (all) {
      router::RouterOptions ro;
      ro.listen_address = cfg.router.listen.address();
      ro.model_dir = cfg.model.path;
      ro.max_queue = cfg.limits.max_queue;
      ro.max_context = cfg.limits.max_model_len;
      ro.max_new_tokens_limit = cfg.limits.max_new_tokens;
      ro.max_logprobs = cfg.limits.max_logprobs;
      ro.attention_workers = aw_addresses;
      ro.api_keys_file = cfg.security.api_keys_file;
      ro.api_tls = cfg.security.api_tls;
      auto created = router::RouterServer::Create(ro);
      if (!created.ok()) {
        std::cerr << "switchyard-local: router: " << created.status().message() << "\n";
        failures.fetch_add(1);
        stop.store(true);
        break;
      }
      router = *std::move(created);
      std::cout << "switchyard-local: cluster ready (single process, inproc transport); "
                   "Generate API on "
                << cfg.router.listen.address() << std::endl;
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      std::cerr << "switchyard-local: the attention workers did not start in time\n";
      failures.fetch_add(1);
      stop.store(true);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  while (!should_stop()) cluster::WaitForShutdown(std::chrono::milliseconds(200));
  std::cerr << "switchyard-local: stopping the cluster\n";
  stop.store(true);
  if (router != nullptr) router->Shutdown();
  // Closing the transports wakes any worker waiting on a peer.
  for (auto& t : transports) (void)t->Close();
  for (auto& t : threads) t.join();
  std::cerr << "switchyard-local: all roles stopped\n";
  return failures.load() > 0 ? 1 : 0;
}

}  // namespace sy::tools
